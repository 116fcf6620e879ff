//! The chat completion request parser (what `/v1/chat/completions` runs on a body) on
//! arbitrary bytes: never a panic; an accepted request is within the limits; a refused one
//! says why.
#![no_main]

use libfuzzer_sys::fuzz_target;
use safegate_api::{parse_body, parse_chat, ChatLimits, ROLES};

const LIMITS: ChatLimits = ChatLimits {
    max_messages: 16,
    max_tokens: 512,
};

fuzz_target!(|data: &[u8]| {
    let value = match parse_body(data) {
        Ok(v) => v,
        Err(e) => {
            assert!(!e.message.is_empty());
            return;
        }
    };
    match parse_chat(&value, &LIMITS) {
        Ok(p) => {
            assert!(!p.messages.is_empty() && p.messages.len() <= LIMITS.max_messages);
            assert!((1..=LIMITS.max_tokens).contains(&p.max_tokens));
            assert!(p.messages.iter().all(|m| ROLES.contains(&m.role.as_str())));
        }
        Err(e) => assert!(!e.message.is_empty()),
    }
});
