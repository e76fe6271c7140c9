//! The web client, compiled into the binary: no build step, no files to deploy beside it.
//! Plain ES modules; `rdpwire.js` is the entry point and names what each other file holds.

#[derive(Debug, PartialEq, Eq)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("index.html"),
    },
    Asset {
        path: "/rdpwire.js",
        content_type: JS,
        body: include_bytes!("rdpwire.js"),
    },
    Asset {
        path: "/protocol.js",
        content_type: JS,
        body: include_bytes!("protocol.js"),
    },
    Asset {
        path: "/pipeline.js",
        content_type: JS,
        body: include_bytes!("pipeline.js"),
    },
    Asset {
        path: "/compositor.js",
        content_type: JS,
        body: include_bytes!("compositor.js"),
    },
    Asset {
        path: "/avc.js",
        content_type: JS,
        body: include_bytes!("avc.js"),
    },
    Asset {
        path: "/sps.js",
        content_type: JS,
        body: include_bytes!("sps.js"),
    },
    Asset {
        path: "/input.js",
        content_type: JS,
        body: include_bytes!("input.js"),
    },
    Asset {
        path: "/keymap.js",
        content_type: JS,
        body: include_bytes!("keymap.js"),
    },
    Asset {
        path: "/pointer.js",
        content_type: JS,
        body: include_bytes!("pointer.js"),
    },
    Asset {
        path: "/audio.js",
        content_type: JS,
        body: include_bytes!("audio.js"),
    },
    // Loaded with `audioWorklet.addModule`, not imported: it runs on the audio thread.
    Asset {
        path: "/audio-worklet.js",
        content_type: JS,
        body: include_bytes!("audio-worklet.js"),
    },
];

pub fn asset(path: &str) -> Option<&'static Asset> {
    let path = if path == "/index.html" { "/" } else { path };
    ASSETS.iter().find(|a| a.path == path)
}

/// Every asset, for tests and tools that serve or check the client as a whole.
pub fn assets() -> &'static [Asset] {
    ASSETS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every module the page imports or loads (`"./name.js"`: imports, the audio worklet) is
    /// served, so a new file cannot be forgotten here.
    #[test]
    fn every_imported_module_is_an_asset() {
        for a in assets() {
            let text = String::from_utf8_lossy(a.body);
            for part in text.split("\"./").skip(1) {
                let name = part.split('"').next().unwrap_or_default();
                let path = format!("/{name}");
                assert!(
                    asset(&path).is_some(),
                    "{} imports {path}, which is not served",
                    a.path
                );
            }
        }
        assert!(asset("/index.html").is_some());
        assert!(asset("/nope.js").is_none());
    }
}
