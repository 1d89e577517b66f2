//! The configuration parser on arbitrary bytes: it must return assignments or an error
//! with a line number, never panic, loop or blow up memory (`$A$A` doubling is capped).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use toolbox::model::config::Settings;
use toolbox::host::Env;

fuzz_target!(|data: &[u8]| {
    let env = Env::from_pairs([("HOME", "/home/fuzz"), ("USER", "fuzz")]);
    let mut settings = Settings::default();
    let path = Path::new("/etc/default/toolbox");
    if settings.apply_bytes(path, data, &env).is_ok() {
        // Every word-valued setting splits or names its origin; neither may panic.
        for (key, _) in settings.iter() {
            if key.words {
                let _ = settings.words(key.name);
            }
        }
    }
});
