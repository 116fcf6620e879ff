//! Policy and bindings files: any text gives a policy or errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safegate_policies::{parse_bindings, parse_policy};
use safegate_shield::Shield;

fuzz_target!(init: {
    // Compiling the rule packs takes seconds under instrumentation: before the clock starts.
    Shield::embedded();
}, |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = parse_policy("p.yaml", text, Shield::embedded()) {
        assert!(!errors.0.is_empty());
    }
    let _ = parse_bindings("bindings.yaml", text);
});
