//! Config parsing and validation: any text in, a config or an error naming the problem out,
//! never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cfg) = clusterdns::config::FileConfig::parse(Path::new("c.yaml"), text) {
        // Resolving reads files named in the config (resolv.conf paths, CA files): only plain
        // addresses are resolved here, so the fuzzer cannot make it read arbitrary files.
        let plain = cfg.servers.iter().flat_map(|s| &s.forward.upstreams).chain(cfg.upstream_resolvers.iter().flat_map(|u| &u.upstreams)).all(|u| !u.starts_with('/'));
        let no_files = cfg.servers.iter().filter_map(|s| s.forward.tls.as_ref()).chain(cfg.upstream_resolvers.as_ref().and_then(|u| u.tls.as_ref())).all(|t| t.ca_file.is_none());
        if plain && no_files && cfg.upstream_resolvers.is_some() {
            let _ = cfg.resolve(&[]);
        }
    }
});
