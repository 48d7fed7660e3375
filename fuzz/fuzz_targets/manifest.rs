//! Manifest parsing: any text in, objects and errors out, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for name in ["f.yaml", "f.json"] {
        let parsed = discovery::manifests::parse_manifest(Path::new(name), text);
        // A file that did not parse yields no objects.
        assert!(!parsed.unreadable || parsed.objects.is_empty());
    }
});
