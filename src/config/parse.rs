//! Value parsers. Each returns the reason in words; the caller adds key, value and origin.

use std::net::SocketAddr;
use std::time::Duration;

use super::LogFormat;

pub fn size(s: &str, min: usize, max: usize) -> Result<usize, String> {
    let n = parse_size::parse_size(s)
        .map_err(|e| format!("not a size ({e}); write e.g. 512MiB, 2GiB or 65536"))?;
    let n = usize::try_from(n).map_err(|_| "size does not fit this machine".to_owned())?;
    if n < min || n > max {
        return Err(format!(
            "must be between {} and {} bytes",
            min,
            if max == usize::MAX {
                "any number of".to_owned()
            } else {
                max.to_string()
            }
        ));
    }
    Ok(n)
}

pub fn count(s: &str, min: usize, max: usize) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| "not a whole number".to_owned())?;
    if n < min || n > max {
        return Err(format!("must be between {min} and {max}"));
    }
    Ok(n)
}

pub fn duration(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("not a duration ({e}); write e.g. 30s, 500ms or 2m"))?;
    if d < min || d > max {
        return Err(format!(
            "must be between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

/// Opus packet lengths the gateway encodes.
pub fn audio_frame(s: &str) -> Result<Duration, String> {
    let d = duration(s, Duration::from_millis(10), Duration::from_millis(20))?;
    if d == Duration::from_millis(10) || d == Duration::from_millis(20) {
        Ok(d)
    } else {
        Err("must be 10ms or 20ms".to_owned())
    }
}

pub fn bool_value(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("not a boolean; write true or false".to_owned()),
    }
}

pub fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "not an address:port; write e.g. 0.0.0.0:8080 or [::1]:8080".to_owned())
}

pub fn log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "human" => Ok(LogFormat::Human),
        "json" => Ok(LogFormat::Json),
        _ => Err("must be human or json".to_owned()),
    }
}

/// `scheme://host[:port]` entries, comma-separated, or `*`.
pub fn origins(s: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = s
        .split(',')
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .filter(|o| !o.is_empty())
        .collect();
    for o in &list {
        let valid = o == "*"
            || (o.starts_with("http://") || o.starts_with("https://"))
                && !o
                    .split_once("://")
                    .is_some_and(|(_, rest)| rest.is_empty() || rest.contains('/'));
        if !valid {
            return Err(format!(
                "{o:?} is not an origin; write scheme://host[:port], e.g. https://portal.example"
            ));
        }
    }
    Ok(list)
}

/// Linux clamps socket buffers below about 4 KiB; a value under that would be budgeted wrongly.
pub fn socket_buffer(s: &str) -> Result<usize, String> {
    size(s, 4096, 64 << 20)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size("64KiB", 0, usize::MAX).unwrap(), 65536);
        assert_eq!(size("1 GiB", 0, usize::MAX).unwrap(), 1 << 30);
        assert_eq!(size("4096", 0, usize::MAX).unwrap(), 4096);
        assert!(size("12XB", 0, usize::MAX).is_err());
        assert!(size("1KiB", 4096, 8192).unwrap_err().contains("between"));
    }

    #[test]
    fn durations_and_counts() {
        assert_eq!(
            duration("500ms", Duration::ZERO, Duration::MAX).unwrap(),
            Duration::from_millis(500)
        );
        assert!(duration("soon", Duration::ZERO, Duration::MAX).is_err());
        assert!(count("0", 1, 4).is_err());
        assert!(count("-1", 1, 4).is_err());
        assert_eq!(count("4", 1, 4).unwrap(), 4);
    }

    #[test]
    fn bools_and_formats() {
        assert!(bool_value("TRUE").unwrap());
        assert!(!bool_value("off").unwrap());
        assert!(bool_value("maybe").is_err());
        assert_eq!(log_format("json").unwrap(), LogFormat::Json);
        assert!(log_format("xml").is_err());
    }
}
