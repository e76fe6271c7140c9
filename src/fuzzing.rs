//! Entry points for the fuzz targets in `fuzz/` and for `tests/fuzz_corpus.rs`, which feeds
//! their corpus and every crash input through the same functions in the stable test suite.
//! Not an API: each function takes untrusted bytes the way the gateway does and throws the
//! result away; the only thing under test is that nothing panics, loops or allocates without
//! bound. See `docs/security.md`, section "Fuzzing".

use ironrdp_core::encode_vec;
use ironrdp_dvc::pdu::{
    CapabilitiesRequestPdu, CreateRequestPdu, DataFirstPdu, DataPdu, DrdynvcDataPdu,
    DrdynvcServerPdu,
};
use ironrdp_pdu::Action;
use ironrdp_svc::{server_encode_svc_messages, SvcMessage};

use crate::demo::hostile::RawPdu;
use crate::protocol::{FromBrowser, ToBrowser};
use crate::rdp::large::LargeBudget;
use crate::rdp::session::connected_for_graphics;
use crate::rdp::Session;
use crate::token::envelope::{self, SealingKey};

/// The fixed key the token target opens with (id 1, bytes 0..32). Never a real key.
pub const TEST_TOKEN_KEY: [u8; 32] = {
    let mut k = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        k[i] = i as u8;
        i += 1;
    }
    k
};

/// The browser-protocol decoder: one WebSocket message from a page (and, for the codec's
/// sake, one for a page), decoded; a decoded message must encode to bytes that decode to it.
pub fn browser_protocol(data: &[u8]) {
    if let Ok(m) = FromBrowser::decode(data) {
        let again = FromBrowser::decode(&m.encode());
        assert_eq!(again.as_ref(), Ok(&m), "re-encoded message differs");
    }
    let _ = ToBrowser::decode(data);
}

/// The HTTP request-head parser and what the connection does next with a head: route it,
/// check its `Origin`, hand it to the WebSocket handshake.
pub fn http_request(data: &[u8]) {
    if let Ok(Some((head, used))) = crate::http::request::parse_head(data, 8 << 10) {
        assert!(used <= data.len());
        let _ = crate::http::route::route(&head);
        let _ = crate::http::origin::check(&head, &["https://example.test".to_owned()]);
        let _ = head.to_http();
    }
}

/// The connection-token path: the text opened with [`TEST_TOKEN_KEY`], and (so the fuzzer
/// reaches the claims without forging AES-GCM) the bytes sealed with that key and opened
/// again, then read as claims.
pub fn token(data: &[u8]) {
    let Ok(key) = SealingKey::new(1, &TEST_TOKEN_KEY) else {
        return;
    };
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(plain) = envelope::open(text, std::slice::from_ref(&key)) {
            let _ = crate::token::claims::Claims::from_json(&plain);
        }
    }
    if let Ok(sealed) = envelope::seal(&key, [7; 12], data) {
        if let Ok(plain) = envelope::open(&sealed, std::slice::from_ref(&key)) {
            let _ = crate::token::claims::Claims::from_json(&plain);
        }
    }
}

use crate::rdp::session::graphics_only::{DRDYNVC_CHANNEL, USER_CHANNEL};
const GFX_DVC: u32 = 5;
/// What the large-message budget of the fuzzed session holds (one 2 MiB message's cost).
const FUZZ_BUDGET: usize = 8 << 20;
/// `--max-dvc-message` of the fuzzed session.
const FUZZ_MAX_MESSAGE: usize = 2 << 20;

/// The graphics path from the server's bytes: a connected [`Session`] (IronRDP's active stage,
/// the bounded DRDYNVC, the EGFX channel opened) is fed server PDUs, and every event is taken
/// as the shell takes them. The first byte picks the layer the rest is for:
/// - `0`: the raw server byte stream (TPKT/fast-path framing, X.224, MCS, channels);
/// - `1`: DRDYNVC PDUs, each `u16` length-prefixed, sent on the DRDYNVC static channel;
/// - anything else: one EGFX channel message (ZGFX, then RDPGFX commands), fragmented into
///   DataFirst/Data PDUs as a server does when it is long.
pub fn egfx_wire(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let budget = LargeBudget::new(FUZZ_BUDGET);
    let mut session = connected_session(budget.clone());
    let mut out = Vec::new();
    let mut feed = |session: &mut Session, action: Action, frame: &[u8]| -> bool {
        out.clear();
        let ok = session.process(action, frame, None, &mut out).is_ok();
        drain(session, &budget);
        ok && !session.is_ended()
    };
    let setup = [
        dvc_frame(&DrdynvcServerPdu::Capabilities(
            CapabilitiesRequestPdu::new(ironrdp_dvc::pdu::CapsVersion::V1, None),
        )),
        dvc_frame(&DrdynvcServerPdu::Create(CreateRequestPdu::new(
            GFX_DVC,
            crate::rdp::egfx::CHANNEL_NAME.to_owned(),
        ))),
    ];
    for frame in setup.iter().flatten() {
        if !feed(&mut session, Action::X224, frame) {
            return;
        }
    }
    match mode {
        0 => {
            let mut rest = rest;
            while let Ok(Some(info)) = ironrdp_pdu::find_size(rest) {
                let Some((frame, tail)) = rest.split_at_checked(info.length) else {
                    return;
                };
                if info.length == 0 || !feed(&mut session, info.action, frame) {
                    return;
                }
                rest = tail;
            }
        }
        1 => {
            let mut rest = rest;
            while let Some((len, tail)) = rest.split_first_chunk::<2>() {
                let len = usize::from(u16::from_le_bytes(*len));
                let Some((pdu, tail)) = tail.split_at_checked(len) else {
                    return;
                };
                rest = tail;
                let Some(frame) = svc_frame(pdu) else { return };
                if !feed(&mut session, Action::X224, &frame) {
                    return;
                }
            }
        }
        _ => {
            for frame in gfx_message_frames(rest) {
                if !feed(&mut session, Action::X224, &frame) {
                    return;
                }
            }
        }
    }
}

/// Takes every event, gives the large-message permit a message waits for (releasing what the
/// "page" holds first, as the shell does once the page has everything).
fn drain(session: &mut Session, budget: &LargeBudget) {
    while session.next_event().is_some() {}
    if let Some(need) = session.large_permit_needed() {
        session.release_large();
        if let Some(permit) = budget.try_take(need) {
            session.give_large_permit(permit);
        }
    }
}

/// A session as the connector leaves it, with only the graphics channel registered.
fn connected_session(budget: LargeBudget) -> Session {
    let mut session = connected_for_graphics(FUZZ_MAX_MESSAGE, Some(budget));
    while session.next_event().is_some() {}
    session
}

/// One DRDYNVC PDU in its static channel PDU (MCS Send Data Indication in X.224).
fn dvc_frame(pdu: &DrdynvcServerPdu) -> Option<Vec<u8>> {
    svc_frame(&encode_vec(pdu).ok()?)
}

/// Raw DRDYNVC bytes in their static channel PDU, so the bytes themselves are what is tested.
fn svc_frame(payload: &[u8]) -> Option<Vec<u8>> {
    server_encode_svc_messages(
        vec![SvcMessage::from(RawPdu(payload.to_vec()))],
        DRDYNVC_CHANNEL,
        USER_CHANNEL,
    )
    .ok()
}

/// An EGFX channel message as a server sends it: one Data PDU, or a DataFirst and Data PDUs.
fn gfx_message_frames(message: &[u8]) -> Vec<Vec<u8>> {
    const MAX: usize = DrdynvcDataPdu::MAX_DATA_SIZE;
    let Ok(total) = u32::try_from(message.len()) else {
        return Vec::new();
    };
    if message.len() < MAX {
        return dvc_frame(&DrdynvcServerPdu::Data(DrdynvcDataPdu::Data(DataPdu::new(
            GFX_DVC,
            message.to_vec(),
        ))))
        .into_iter()
        .collect();
    }
    message
        .chunks(MAX)
        .enumerate()
        .filter_map(|(i, chunk)| {
            let data = if i == 0 {
                DrdynvcDataPdu::DataFirst(DataFirstPdu::new(GFX_DVC, total, chunk.to_vec()))
            } else {
                DrdynvcDataPdu::Data(DataPdu::new(GFX_DVC, chunk.to_vec()))
            };
            dvc_frame(&DrdynvcServerPdu::Data(data))
        })
        .collect()
}

/// Writes the seed corpus the fuzz targets start from (`cargo test --lib fuzzing -- --ignored`
/// with `RDPWIRE_FUZZ_SEEDS=fuzz/corpus`): real messages of each kind, so the fuzzers start
/// past the framing.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod seeds {
    use std::path::Path;

    use ironrdp_egfx::pdu::{
        encode_avc420_bitmap_stream, Avc420Region, CapabilitiesConfirmPdu, CapabilitiesV81Flags,
        CapabilitySet, Codec1Type, CreateSurfacePdu, EndFramePdu, GfxPdu, PixelFormat,
        ResetGraphicsPdu, SolidFillPdu, StartFramePdu, Timestamp, WireToSurface1Pdu,
    };
    use ironrdp_graphics::zgfx;
    use ironrdp_pdu::geometry::ExclusiveRectangle;

    use super::*;
    use crate::rdp::InputEvent;

    fn write(dir: &Path, target: &str, name: &str, data: &[u8]) {
        let d = dir.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), data).unwrap();
        // Every seed must pass the target it is for.
        match target {
            "egfx_wire" => egfx_wire(data),
            "browser_protocol" => browser_protocol(data),
            "token" => token(data),
            _ => http_request(data),
        }
    }

    fn frame_pdus(size: usize) -> Vec<u8> {
        let r = |l, t, rr, b| ExclusiveRectangle {
            left: l,
            top: t,
            right: rr,
            bottom: b,
        };
        let au: Vec<u8> = [0, 0, 0, 1, 0x65]
            .into_iter()
            .chain((0..size).map(|i| (i % 251) as u8))
            .collect();
        let pdus = [
            GfxPdu::CapabilitiesConfirm(CapabilitiesConfirmPdu::from_typed(&CapabilitySet::V8_1 {
                flags: CapabilitiesV81Flags::AVC420_ENABLED,
            })),
            GfxPdu::ResetGraphics(ResetGraphicsPdu {
                width: 640,
                height: 480,
                monitors: vec![],
            }),
            GfxPdu::CreateSurface(CreateSurfacePdu {
                surface_id: 1,
                width: 640,
                height: 480,
                pixel_format: PixelFormat::XRgb,
            }),
            GfxPdu::StartFrame(StartFramePdu {
                timestamp: Timestamp {
                    milliseconds: 1,
                    seconds: 2,
                    minutes: 3,
                    hours: 4,
                },
                frame_id: 1,
            }),
            GfxPdu::WireToSurface1(WireToSurface1Pdu {
                surface_id: 1,
                codec_id: Codec1Type::Avc420,
                pixel_format: PixelFormat::XRgb,
                destination_rectangle: r(0, 0, 640, 480),
                bitmap_data: encode_avc420_bitmap_stream(
                    &[Avc420Region::new(0, 0, 64, 64, 22, 100)],
                    &au,
                ),
            }),
            GfxPdu::SolidFill(SolidFillPdu {
                surface_id: 1,
                fill_pixel: ironrdp_egfx::pdu::Color {
                    b: 1,
                    g: 2,
                    r: 3,
                    xa: 255,
                },
                rectangles: vec![r(0, 0, 8, 8)],
            }),
            GfxPdu::EndFrame(EndFramePdu { frame_id: 1 }),
        ];
        pdus.iter().flat_map(|p| encode_vec(p).unwrap()).collect()
    }

    #[test]
    #[ignore = "writes the seed corpus; run by hand"]
    fn write_seeds() {
        let Some(dir) = std::env::var_os("RDPWIRE_FUZZ_SEEDS") else {
            return;
        };
        let dir = Path::new(&dir);
        // egfx_wire: a whole graphics message (uncompressed, compressed, long enough to be
        // fragmented), the same as DRDYNVC PDUs, and as raw server PDUs.
        let small = frame_pdus(40);
        let mut c = zgfx::Compressor::new();
        let compressed =
            zgfx::compress_and_wrap_egfx(&small, &mut c, zgfx::CompressionMode::Always).unwrap();
        for (name, msg) in [
            ("gfx_plain", zgfx::wrap_uncompressed(&small)),
            ("gfx_compressed", compressed),
            ("gfx_long", zgfx::wrap_uncompressed(&frame_pdus(4000))),
        ] {
            let mut d = vec![2u8];
            d.extend(&msg);
            write(dir, "egfx_wire", name, &d);
            let mut pdus = vec![1u8];
            let mut raw = vec![0u8];
            for f in gfx_message_frames(&msg) {
                // The DRDYNVC payload is the frame's tail after X.224, MCS and the channel
                // header; re-encode it from the message instead.
                raw.extend(&f);
            }
            let chunks: Vec<Vec<u8>> = if msg.len() < DrdynvcDataPdu::MAX_DATA_SIZE {
                vec![
                    encode_vec(&DrdynvcServerPdu::Data(DrdynvcDataPdu::Data(DataPdu::new(
                        GFX_DVC,
                        msg.clone(),
                    ))))
                    .unwrap(),
                ]
            } else {
                msg.chunks(DrdynvcDataPdu::MAX_DATA_SIZE)
                    .enumerate()
                    .map(|(i, c)| {
                        let data = if i == 0 {
                            DrdynvcDataPdu::DataFirst(DataFirstPdu::new(
                                GFX_DVC,
                                msg.len() as u32,
                                c.to_vec(),
                            ))
                        } else {
                            DrdynvcDataPdu::Data(DataPdu::new(GFX_DVC, c.to_vec()))
                        };
                        encode_vec(&DrdynvcServerPdu::Data(data)).unwrap()
                    })
                    .collect()
            };
            for ch in chunks {
                pdus.extend((ch.len() as u16).to_le_bytes());
                pdus.extend(ch);
            }
            write(dir, "egfx_wire", &format!("{name}_dvc"), &pdus);
            write(dir, "egfx_wire", &format!("{name}_raw"), &raw);
        }
        // browser_protocol: one of each message a page sends, and a few the gateway sends.
        let from = [
            FromBrowser::Ping { nonce: 7 },
            FromBrowser::ClientHello {
                width: 1280,
                height: 720,
                target: "office".into(),
            },
            FromBrowser::FrameDecoded {
                frame_id: 3,
                frames_decoded: 3,
                queue_depth: 0,
            },
            FromBrowser::Input(InputEvent::Key {
                scancode: 0x1e,
                extended: false,
                down: true,
            }),
            FromBrowser::Resize {
                width: 800,
                height: 600,
            },
        ];
        for (i, m) in from.iter().enumerate() {
            write(dir, "browser_protocol", &format!("from_{i}"), &m.encode());
        }
        for (i, m) in [
            ToBrowser::EndFrame { frame_id: 9 },
            ToBrowser::StartFrame { frame_id: 9 },
        ]
        .iter()
        .enumerate()
        {
            write(dir, "browser_protocol", &format!("to_{i}"), &m.to_vec());
        }
        // token: a token sealed with the test key, and the claims it carries.
        let claims = br#"{"id":"abc","iat":1700000000,"exp":1700000060,"host":"desk.example","port":3389,"tls":"verify","username":"bob","password":"pw"}"#;
        let key = SealingKey::new(1, &TEST_TOKEN_KEY).unwrap();
        let sealed = envelope::seal(&key, [3; 12], claims).unwrap();
        write(dir, "token", "sealed", sealed.as_bytes());
        write(dir, "token", "claims", claims);
        // http_request: a browser's upgrade, a probe.
        write(
            dir,
            "http_request",
            "upgrade",
            b"GET /ws?target=office HTTP/1.1\r\nHost: gw.example\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\nOrigin: https://example.test\r\n\r\n",
        );
        write(
            dir,
            "http_request",
            "healthz",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        );
    }
}
