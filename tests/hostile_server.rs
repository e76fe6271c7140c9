//! Hostile RDP servers behind the real gateway: each one completes the demo server's real
//! connection sequence (TLS, NLA, DRDYNVC, the graphics channel opened and its capabilities
//! confirmed) and then sends crafted bytes inside valid outer layers. For every case the page
//! is told why its session ended (the close frame's reason), the gateway's resident memory
//! never grows by more than one session's figure while it happens, and a neighbour session on
//! the same core keeps getting frames.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ironrdp_core::encode_vec;
use ironrdp_dvc::pdu::{DataFirstPdu, DataPdu, DrdynvcDataPdu, DrdynvcServerPdu};
use ironrdp_egfx::pdu::{
    encode_avc420_bitmap_stream, Avc420Region, Codec1Type, CreateSurfacePdu, GfxPdu, PixelFormat,
    ResetGraphicsPdu, WireToSurface1Pdu,
};
use ironrdp_pdu::geometry::ExclusiveRectangle;
use rdpwire::demo::hostile::Attack;
use rdpwire::demo::{Content, DemoAudio, DemoOptions, DemoServer};
use rdpwire::protocol::{FromBrowser, ToBrowser};
use support::{init_logs, proc_status_bytes, Gateway, TempDir, Ws};
use tungstenite::Message;

const USER: &str = "hostile";
const PASS: &str = "hostile-pass-7";
/// `--max-dvc-message` of the gateway under test.
const MAX_DVC: u32 = 1 << 20;
/// `--large-frames` of the gateway under test.
const LARGE_FRAMES: u64 = 4 << 20;

fn server(content: Content) -> DemoServer {
    init_logs();
    DemoServer::start(DemoOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        username: USER.to_owned(),
        password: PASS.to_owned(),
        audio: DemoAudio::Off,
        content,
        max_connections: 4,
    })
    .unwrap()
}

/// RDPGFX commands in an uncompressed ZGFX segment, as a graphics channel message.
fn gfx(pdus: &[GfxPdu]) -> Vec<u8> {
    let mut raw = Vec::new();
    for p in pdus {
        raw.extend(encode_vec(p).unwrap());
    }
    ironrdp_graphics::zgfx::wrap_uncompressed(&raw)
}

fn create_surface(width: u16, height: u16) -> GfxPdu {
    GfxPdu::CreateSurface(CreateSurfacePdu {
        surface_id: 1,
        width,
        height,
        pixel_format: PixelFormat::XRgb,
    })
}

fn rect(left: u16, top: u16, right: u16, bottom: u16) -> ExclusiveRectangle {
    ExclusiveRectangle {
        left,
        top,
        right,
        bottom,
    }
}

/// An AVC420 update of surface 1 at `dest` whose metablock names `region`.
fn avc420(dest: ExclusiveRectangle, region: (u16, u16, u16, u16)) -> GfxPdu {
    let au = [0, 0, 0, 1, 0x65, 0x88, 0x84, 0x00];
    let stream = encode_avc420_bitmap_stream(
        &[Avc420Region::new(
            region.0, region.1, region.2, region.3, 22, 100,
        )],
        &au,
    );
    GfxPdu::WireToSurface1(WireToSurface1Pdu {
        surface_id: 1,
        codec_id: Codec1Type::Avc420,
        pixel_format: PixelFormat::XRgb,
        destination_rectangle: dest,
        bitmap_data: stream,
    })
}

fn dvc(pdu: DrdynvcDataPdu) -> Vec<u8> {
    encode_vec(&DrdynvcServerPdu::Data(pdu)).unwrap()
}

fn drdynvc(make: impl Fn(u32) -> Vec<u8> + Send + Sync + 'static) -> Attack {
    Attack::Drdynvc(Arc::new(make))
}

/// Bits, most significant first, packed as a compressed ZGFX segment's data.
fn pack(bits: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        out[i / 8] |= b << (7 - i % 8);
    }
    out.push(((8 - bits.len() % 8) % 8) as u8);
    out
}

/// A compressed single ZGFX message of 13 bytes: a literal, then a match one byte back of
/// 2^30 bytes (1 GiB).
fn zgfx_bomb() -> Vec<u8> {
    let mut bits = vec![1, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1];
    bits.extend([1; 29]);
    bits.push(0);
    bits.extend([0; 30]);
    let mut m = vec![0xe0, 0x24];
    m.extend(pack(&bits));
    m
}

/// A TPKT + X.224 Data header around `payload`.
fn x224(payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len() + 7).unwrap();
    let mut v = vec![3, 0];
    v.extend(len.to_be_bytes());
    v.extend([2, 0xf0, 0x80]);
    v.extend(payload);
    v
}

struct Case {
    name: &'static str,
    steps: Vec<Attack>,
    /// What the close frame's reason must contain.
    reason: &'static str,
}

fn cases() -> Vec<Case> {
    let surface = gfx(&[
        GfxPdu::ResetGraphics(ResetGraphicsPdu {
            width: 640,
            height: 480,
            monitors: vec![],
        }),
        create_surface(640, 480),
    ]);
    let mut cases = vec![
        Case {
            name: "zgfx_bad_descriptor",
            steps: vec![Attack::Gfx(vec![0xe7, 0x04, 1, 2, 3, 4])],
            reason: "graphics channel: cannot decompress a message",
        },
        Case {
            name: "zgfx_bomb",
            steps: vec![Attack::Gfx(zgfx_bomb())],
            reason:
                "graphics channel: a 13-byte message would decompress to more than 262144 bytes",
        },
        Case {
            name: "zgfx_multipart_declares_4gib",
            steps: vec![Attack::Gfx({
                let mut m = vec![0xe1, 1, 0, 0xff, 0xff, 0xff, 0xff, 5, 0, 0, 0, 0x04];
                m.extend(b"abcd");
                m
            })],
            reason: "would decompress to more than",
        },
        Case {
            name: "zgfx_truncated_segment",
            steps: vec![Attack::Gfx(vec![
                0xe1, 1, 0, 100, 0, 0, 0, 0xe8, 3, 0, 0, 0x04, 1, 2,
            ])],
            reason: "graphics channel: cannot decompress a message",
        },
        Case {
            name: "zgfx_truncated_bits",
            // A match token whose distance bits are missing.
            steps: vec![Attack::Gfx(vec![0xe0, 0x24, 0x88, 0x03])],
            reason: "graphics channel: cannot decompress a message",
        },
        Case {
            name: "rdpgfx_length_beyond_message",
            steps: vec![Attack::Gfx(ironrdp_graphics::zgfx::wrap_uncompressed(&[
                0x0b, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 2,
            ]))],
            reason: "graphics channel: malformed RDPGFX_HEADER",
        },
        Case {
            name: "surface_65535x65535",
            steps: vec![Attack::Gfx(gfx(&[create_surface(65535, 65535)]))],
            reason: "surface 1 of 65535×65535 pixels is not within 1×1 to 8192×8192",
        },
        Case {
            name: "h264_destination_outside_surface",
            steps: vec![
                Attack::Gfx(surface.clone()),
                Attack::Gfx(gfx(&[avc420(rect(0, 0, 1920, 1080), (0, 0, 64, 64))])),
            ],
            reason: "H.264 destination (0, 0)–(1920, 1080) is outside surface 1 of 640×480",
        },
        Case {
            name: "h264_region_outside_surface",
            steps: vec![
                Attack::Gfx(surface.clone()),
                Attack::Gfx(gfx(&[avc420(
                    rect(0, 0, 640, 480),
                    (600, 400, 65535, 65535),
                )])),
            ],
            reason: "H.264 region (600, 400)–(65535, 65535) is outside surface 1 of 640×480",
        },
        Case {
            name: "h264_on_a_surface_never_created",
            steps: vec![Attack::Gfx(gfx(&[avc420(
                rect(0, 0, 64, 64),
                (0, 0, 64, 64),
            )]))],
            reason: "H.264 for surface 1, which the server never created",
        },
        Case {
            name: "data_first_above_max_dvc_message",
            steps: vec![drdynvc(|ch| {
                dvc(DrdynvcDataPdu::DataFirst(DataFirstPdu::new(
                    ch,
                    u32::MAX,
                    vec![0; 100],
                )))
            })],
            reason: "sent a 4294967295-byte message on dynamic channel",
        },
        Case {
            name: "data_fragments_past_the_announced_total",
            steps: vec![
                drdynvc(|ch| {
                    dvc(DrdynvcDataPdu::DataFirst(DataFirstPdu::new(
                        ch,
                        64 << 10,
                        vec![0; 1000],
                    )))
                }),
                // 1.5 MB of fragments for a 64 KiB message: endless, as far as the gateway
                // may care.
                Attack::Repeat {
                    steps: vec![drdynvc(|ch| {
                        dvc(DrdynvcDataPdu::Data(DataPdu::new(ch, vec![0; 1500])))
                    })],
                    times: 1000,
                },
            ],
            reason: "fragments go on past the 65536 bytes announced",
        },
        Case {
            name: "data_first_on_many_channels",
            steps: (0..64u32)
                .map(|i| {
                    drdynvc(move |_| {
                        dvc(DrdynvcDataPdu::DataFirst(DataFirstPdu::new(
                            1000 + i,
                            16 << 10,
                            vec![0; 1000],
                        )))
                    })
                })
                .collect(),
            reason: "fragmented messages on more than 4 dynamic channels at once",
        },
        Case {
            name: "junk_after_connect",
            // 0x42 is neither a TPKT (3) nor a fast-path header.
            steps: vec![Attack::Raw(
                std::iter::once(0x42)
                    .chain((1..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8))
                    .collect(),
            )],
            reason: "failed while reading a PDU: the server sent bytes that are not an RDP PDU",
        },
        Case {
            name: "x224_with_a_malformed_mcs_pdu",
            steps: vec![Attack::Raw(x224(&[0x68, 0xff, 0xff, 0xff, 0x00]))],
            reason: "RDP connection to 127.0.0.1 failed while processing a PDU",
        },
    ];
    // A static channel chunk announcing 4 GiB (CHANNEL_FLAG_FIRST), then middle chunks to
    // fill it: IronRDP would keep them all.
    cases.push(Case {
        name: "static_channel_chunk_announcing_4gib",
        steps: vec![
            Attack::StaticChunk {
                len: u32::MAX,
                flags: 0x1,
                data: vec![0; 1000],
            },
            Attack::Repeat {
                steps: vec![Attack::StaticChunk {
                    len: u32::MAX,
                    flags: 0,
                    data: vec![0; 1600],
                }],
                times: 2000,
            },
        ],
        reason: "announced a 4294967295-byte message, above the limit",
    });
    cases
}

/// The neighbour: a demo desktop session on the same core that answers every frame.
struct Neighbour {
    frames: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Result<(), String>>,
}

fn neighbour(gw: &Gateway) -> Neighbour {
    let frames = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut ws = gw.ws().unwrap();
    let (f, s) = (frames.clone(), stop.clone());
    let handle = std::thread::spawn(move || {
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.ws.get_mut() {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
        }
        ws.hello();
        ws.send(&FromBrowser::ClientHello {
            width: 640,
            height: 480,
            target: "neighbour".into(),
        });
        let mut n = 0;
        while !s.load(Ordering::Relaxed) {
            match ws.ws.read() {
                Ok(Message::Binary(b)) => match ToBrowser::decode(&b) {
                    Ok(ToBrowser::EndFrame { frame_id }) => {
                        n += 1;
                        f.store(n.into(), Ordering::Relaxed);
                        ws.send(&FromBrowser::FrameDecoded {
                            frame_id,
                            frames_decoded: n,
                            queue_depth: 0,
                        });
                    }
                    Ok(ToBrowser::Disconnected { reason }) => return Err(reason.into_owned()),
                    _ => {}
                },
                Ok(Message::Close(c)) => return Err(format!("closed: {c:?}")),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        ws.close();
        Ok(())
    });
    Neighbour {
        frames,
        stop,
        handle,
    }
}

/// The gateway's resident set, sampled every 5 ms; `peak` since the last `reset`.
struct RssWatch {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(proc_status_bytes(pid, "VmRSS"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssWatch { peak, stop }
    }

    /// Starts a new peak from the current figure, which it returns.
    fn reset(&self, pid: u32) -> u64 {
        let now = proc_status_bytes(pid, "VmRSS");
        self.peak.store(now, Ordering::Relaxed);
        now
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Opens a session to `target` and reads until the gateway closes it: the Disconnected
/// message's reason and the close frame's code and reason.
fn session_end(gw: &Gateway, target: &str) -> (Option<String>, u16, String) {
    let mut ws: Ws = gw.ws().unwrap();
    ws.hello();
    ws.send(&FromBrowser::ClientHello {
        width: 640,
        height: 480,
        target: target.into(),
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut disconnected = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "{target}: no end\n{}",
            gw.log_text()
        );
        match ws.ws.read() {
            Ok(Message::Binary(b)) => {
                if let Ok(ToBrowser::Disconnected { reason }) = ToBrowser::decode(&b) {
                    disconnected = Some(reason.into_owned());
                }
            }
            Ok(Message::Close(Some(f))) => {
                return (disconnected, u16::from(f.code), f.reason.to_string())
            }
            Ok(Message::Close(None)) => return (disconnected, 1005, String::new()),
            Ok(_) => {}
            Err(e) => panic!("{target}: no close frame: {e}\n{}", gw.log_text()),
        }
    }
}

#[test]
fn hostile_servers_end_their_own_session_in_words_and_nothing_else() {
    let table = cases();

    let servers: Vec<DemoServer> = table
        .iter()
        .map(|c| server(Content::Hostile(Arc::new(c.steps.clone()))))
        .collect();
    let good = server(Content::Desktop);
    let dir = std::env::temp_dir().join(format!("rdpwire-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = TempDir(dir.clone());
    let target = |name: &str, port: u16| {
        format!(
            "[targets.{name}]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"{USER}\"\n\
             password_env = \"HOSTILE_PW\"\ntls = \"insecure\"\n"
        )
    };
    let mut toml = target("neighbour", good.addr().port());
    for (c, s) in table.iter().zip(&servers) {
        toml.push_str(&target(c.name, s.addr().port()));
    }
    let file = dir.join("gw.toml");
    std::fs::write(&file, toml).unwrap();
    std::env::set_var("HOSTILE_PW", PASS);
    let max_dvc = MAX_DVC.to_string();
    let large = LARGE_FRAMES.to_string();
    let gw = Gateway::start(&[
        "--cores",
        "1",
        "--config",
        file.to_str().unwrap(),
        "--max-dvc-message",
        &max_dvc,
        "--large-frames",
        &large,
    ]);
    let pid = gw.child.id();
    let per_session = gw.metrics().get("rdpwire_memory_per_session_bytes");
    let allowance = per_session + LARGE_FRAMES;

    let nb = neighbour(&gw);
    assert!(
        support::eventually(Duration::from_secs(20), || nb
            .frames
            .load(Ordering::Relaxed)
            >= 5),
        "the neighbour never streamed\n{}",
        gw.log_text()
    );
    let rss = RssWatch::start(pid);
    let start_rss = proc_status_bytes(pid, "VmRSS");
    println!(
        "per-session figure {per_session} bytes, allowance {allowance} bytes, gateway RSS {start_rss} bytes with the neighbour"
    );
    let mut failures = Vec::new();
    for case in &table {
        let frames_before = nb.frames.load(Ordering::Relaxed);
        let before = rss.reset(pid);
        let (disconnected, code, reason) = session_end(&gw, case.name);
        let peak = rss.peak.load(Ordering::Relaxed);
        let grew = peak.saturating_sub(before);
        let streamed = support::eventually(Duration::from_secs(10), || {
            nb.frames.load(Ordering::Relaxed) >= frames_before + 3
        });
        println!(
            "{:<40} close {code} {reason:?}; RSS +{} KiB at peak; neighbour {} → {} frames",
            case.name,
            grew >> 10,
            frames_before,
            nb.frames.load(Ordering::Relaxed)
        );
        if code != 4000 || !reason.contains(case.reason) {
            failures.push(format!(
                "{}: close {code} {reason:?} (Disconnected: {disconnected:?}), want a reason containing {:?}",
                case.name, case.reason
            ));
        }
        if disconnected
            .as_deref()
            .is_none_or(|d| !d.starts_with(reason.as_str()))
        {
            failures.push(format!(
                "{}: the Disconnected message {disconnected:?} does not carry the close reason {reason:?}",
                case.name
            ));
        }
        if grew > allowance {
            failures.push(format!(
                "{}: the gateway's RSS grew by {grew} bytes, above the {allowance} of a session and the large-message budget",
                case.name
            ));
        }
        if !streamed {
            failures.push(format!("{}: the neighbour stopped streaming", case.name));
        }
    }
    nb.stop.store(true, Ordering::Relaxed);
    let neighbour_end = nb.handle.join().unwrap();
    drop(rss);
    let end_rss = proc_status_bytes(pid, "VmRSS");
    println!("gateway RSS {end_rss} bytes after every case");
    assert!(
        neighbour_end.is_ok(),
        "the neighbour's session ended: {neighbour_end:?}"
    );
    assert!(
        end_rss.saturating_sub(start_rss) <= allowance,
        "the gateway kept {} bytes more after the hostile sessions",
        end_rss.saturating_sub(start_rss)
    );
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        gw.log_text()
    );
}
