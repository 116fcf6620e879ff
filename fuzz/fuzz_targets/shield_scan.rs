//! The shield's extractor and scanner on arbitrary text, whole and streamed in pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safegate_shield::{ScanOptions, Shield, StreamScanner};

fuzz_target!(init: {
    // Compiling the rule packs takes seconds under instrumentation: before the clock starts.
    Shield::embedded();
}, |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let shield = Shield::embedded();
    let options = ScanOptions::default();
    let whole = shield.scan(text, &options);
    // The same text in pieces cut where the first byte says.
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let mut stream = StreamScanner::new(shield, options);
    let mut at = 0;
    while at < text.len() {
        let mut end = (at + step).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        let _ = stream.push(&text[at..end]);
        assert!(stream.unscanned_from() <= stream.text().len());
        at = end;
    }
    if let (Ok(whole), Ok(streamed)) = (whole, stream.finish()) {
        assert_eq!(whole.findings.len(), streamed.findings.len());
    }
});
