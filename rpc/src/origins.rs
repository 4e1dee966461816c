//! Which web origins may use the RPC from a browser: CORS for HTTP, and the `Origin` of a
//! WebSocket upgrade (a browser sends it on every cross-site connection; without a check any
//! page the user visits could drive the node). Requests without an `Origin` header (curl, cast,
//! alloy, servers) are not from a browser page and are always served, as geth does.
//!
//! Entries: `"local"` (any port on localhost, 127.0.0.1 or [::1], over http or https: the
//! default), `"*"` (any origin), or an exact origin such as `"https://app.example.org"`.

/// A parsed `allowed_origins` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    any: bool,
    local: bool,
    exact: Vec<String>,
}

impl OriginPolicy {
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut policy = Self::default();
        for entry in entries {
            let entry = entry.trim();
            match entry {
                "*" => policy.any = true,
                "local" => policy.local = true,
                _ => {
                    let Some((scheme, host)) = entry.split_once("://") else {
                        return Err(format!(
                            "allowed origin {entry:?}: expected \"local\", \"*\" or scheme://host[:port]"
                        ));
                    };
                    if scheme.is_empty() || host.is_empty() || host.contains('/') {
                        return Err(format!(
                            "allowed origin {entry:?}: an origin is scheme://host[:port], without a path"
                        ));
                    }
                    policy.exact.push(entry.to_ascii_lowercase());
                }
            }
        }
        Ok(policy)
    }

    /// Whether a page of `origin` (an `Origin` header's value) may use the RPC.
    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.trim().to_ascii_lowercase();
        self.any || (self.local && is_local(&origin)) || self.exact.contains(&origin)
    }

    pub fn allows_any(&self) -> bool {
        self.any
    }
}

/// http(s) on localhost, 127.0.0.1 or [::1], any port.
fn is_local(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = if let Some(v6) = rest.strip_prefix('[') {
        match v6.split_once(']') {
            Some((host, port)) if port.is_empty() || is_port(port) => return host == "::1",
            _ => return false,
        }
    } else {
        match rest.split_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return false,
            None => rest,
        }
    };
    host == "localhost" || host == "127.0.0.1"
}

fn is_port(suffix: &str) -> bool {
    suffix
        .strip_prefix(':')
        .unwrap_or(suffix)
        .parse::<u16>()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> OriginPolicy {
        OriginPolicy::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn local_means_loopback_on_any_port() {
        let p = policy(&["local"]);
        for ok in [
            "http://localhost",
            "http://localhost:3000",
            "https://127.0.0.1:8080",
            "http://[::1]:5173",
            "HTTP://LOCALHOST:3000",
        ] {
            assert!(p.allows(ok), "{ok}");
        }
        for refused in [
            "http://localhost.evil.com",
            "http://evil.com",
            "http://127.0.0.1.evil.com:80",
            "null",
            "file://",
            "http://localhost:notaport",
            "http://[::2]:80",
        ] {
            assert!(!p.allows(refused), "{refused}");
        }
    }

    #[test]
    fn exact_origins_and_any() {
        let p = policy(&["https://app.example.org"]);
        assert!(p.allows("https://app.example.org"));
        assert!(!p.allows("https://app.example.org:444"));
        assert!(!p.allows("http://localhost:3000"));
        assert!(policy(&["*"]).allows("https://anything.example"));
        assert!(!policy(&[]).allows("http://localhost"));
    }

    #[test]
    fn bad_entries_are_errors() {
        for bad in ["localhost", "https://x.org/path", "://x", "https://"] {
            assert!(OriginPolicy::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
    }
}
