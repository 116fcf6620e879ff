//! Holds an upstream's reply to the request's `max_tokens`, whatever the upstream does
//! with the field: text passes once counted, and the call stops where the budget ends.
//! Counted in the model's tokens when its tokenizer is at hand (in whole words: the
//! pre-tokenizers of Llama-family models never join two words into one token, so a word
//! is counted once it is complete), else one token per stream delta (what servers send).
//! Pure.

use tokenizers::Tokenizer;

pub struct TokenBudget<'a> {
    tokenizer: Option<&'a Tokenizer>,
    max: usize,
    used: usize,
    /// Text not counted yet (the word in progress).
    pending: String,
    spent: bool,
}

/// What may go on after a push.
#[derive(Debug, PartialEq, Eq)]
pub struct Pass {
    pub text: String,
    /// The budget ends here: stop the call, the reply ends with `length`.
    pub spent: bool,
}

impl<'a> TokenBudget<'a> {
    pub fn new(tokenizer: Option<&'a Tokenizer>, max: usize) -> Self {
        Self {
            tokenizer,
            max,
            used: 0,
            pending: String::new(),
            spent: false,
        }
    }

    /// Tokens counted so far.
    pub fn used(&self) -> usize {
        self.used
    }

    pub fn push(&mut self, delta: &str) -> Pass {
        if self.spent {
            return Pass {
                text: String::new(),
                spent: true,
            };
        }
        let Some(tokenizer) = self.tokenizer else {
            // One delta, one token: the reply may end exactly at the budget, so the call
            // stops at the first delta past it, not at the last one within.
            if self.used == self.max {
                self.spent = true;
                return Pass {
                    text: String::new(),
                    spent: true,
                };
            }
            self.used += 1;
            return Pass {
                text: delta.to_string(),
                spent: false,
            };
        };
        self.pending.push_str(delta);
        match word_boundary(&self.pending) {
            Some(cut) => {
                let done: String = self.pending.drain(..cut).collect();
                self.count(tokenizer, done)
            }
            None => Pass {
                text: String::new(),
                spent: false,
            },
        }
    }

    /// A piece of a tool call's arguments: counted (in tokens, or one per piece), never
    /// cut (a call is relayed whole or not at all by the checks). True once the budget is
    /// spent: the call ends there, as a reply cut at `max_tokens` does.
    pub fn spend_tool(&mut self, arguments: &str) -> bool {
        if arguments.is_empty() {
            return self.spent;
        }
        let n = match self.tokenizer {
            Some(t) => t
                .encode(arguments, false)
                .map_or(arguments.len(), |e| e.len()),
            None => 1,
        };
        self.used = (self.used + n).min(self.max);
        if self.used >= self.max {
            self.spent = true;
        }
        self.spent
    }

    /// The end of the reply: the word in progress is counted too.
    pub fn finish(&mut self) -> Pass {
        let rest = std::mem::take(&mut self.pending);
        match self.tokenizer {
            Some(tokenizer) if !self.spent && !rest.is_empty() => self.count(tokenizer, rest),
            _ => Pass {
                text: String::new(),
                spent: self.spent,
            },
        }
    }

    fn count(&mut self, tokenizer: &Tokenizer, text: String) -> Pass {
        let Ok(encoding) = tokenizer.encode(text.as_str(), false) else {
            // Text the tokenizer cannot take: count it by bytes, the most tokens it can be.
            return self.take_bytes(text);
        };
        let n = encoding.len();
        if self.used + n <= self.max {
            self.used += n;
            return Pass { text, spent: false };
        }
        let keep = self.max - self.used;
        let end = if keep == 0 {
            0
        } else {
            encoding.get_offsets()[keep - 1].1.min(text.len())
        };
        let end = floor_char_boundary(&text, end);
        self.used = self.max;
        self.spent = true;
        self.pending.clear();
        Pass {
            text: text[..end].to_string(),
            spent: true,
        }
    }

    fn take_bytes(&mut self, text: String) -> Pass {
        let keep = self.max - self.used;
        if text.len() <= keep {
            self.used += text.len();
            return Pass { text, spent: false };
        }
        let end = floor_char_boundary(&text, keep);
        self.used = self.max;
        self.spent = true;
        Pass {
            text: text[..end].to_string(),
            spent: true,
        }
    }
}

/// The end of the last complete word: just before the last whitespace that follows a
/// non-whitespace character (` word` stays together, as the pre-tokenizers keep it).
fn word_boundary(text: &str) -> Option<usize> {
    let mut cut = None;
    let mut prev_is_space = true;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() && !prev_is_space {
            cut = Some(i);
        }
        prev_is_space = c.is_whitespace();
    }
    cut.filter(|&c| c > 0)
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_tokenizer_each_delta_is_a_token() {
        let mut b = TokenBudget::new(None, 2);
        assert_eq!(b.push("a").text, "a");
        assert_eq!(b.push("b").text, "b");
        // A reply of exactly two tokens ends as the upstream says; a third delta stops it.
        assert_eq!(
            b.push("c"),
            Pass {
                text: String::new(),
                spent: true
            }
        );
        assert!(b.finish().spent);
        assert_eq!(b.used(), 2);
    }

    #[test]
    fn tool_call_pieces_count_too() {
        let mut b = TokenBudget::new(None, 3);
        assert!(!b.spend_tool("{\"a\""));
        assert!(!b.spend_tool(""));
        assert_eq!(b.push("x").text, "x");
        assert!(b.spend_tool(": 1}"), "the third token spends the budget");
        assert!(b.finish().spent);
    }

    #[test]
    fn word_boundaries() {
        assert_eq!(word_boundary("Hello"), None);
        assert_eq!(word_boundary("Hello there"), Some(5));
        assert_eq!(word_boundary("Hello there  "), Some(11));
        assert_eq!(word_boundary("  lead"), None);
        assert_eq!(word_boundary("a\nb"), Some(1));
    }

    fn tokenizer() -> Option<Tokenizer> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/tiny-llama3/tokenizer.json");
        Tokenizer::from_file(path).ok()
    }

    #[test]
    fn with_a_tokenizer_the_reply_is_cut_at_the_budget() {
        let Some(tok) = tokenizer() else {
            panic!("the tiny-llama3 fixture's tokenizer.json is missing");
        };
        let reply = "The quick brown fox jumps over the lazy dog again and again";
        let all = tok.encode(reply, false).unwrap();
        let max = all.len() / 2;
        let mut b = TokenBudget::new(Some(&tok), max);
        let mut out = String::new();
        let mut spent = false;
        for piece in reply.split_inclusive(' ') {
            let p = b.push(piece);
            out.push_str(&p.text);
            if p.spent {
                spent = true;
                break;
            }
        }
        assert!(spent);
        assert_eq!(b.used(), max);
        assert_eq!(
            tok.encode(out.as_str(), false).unwrap().len(),
            max,
            "{out:?}"
        );
        assert!(reply.starts_with(&out));
        // A reply within the budget passes whole, the last word at the end.
        let mut b = TokenBudget::new(Some(&tok), all.len());
        let mut out = String::new();
        for piece in reply.split_inclusive(' ') {
            out.push_str(&b.push(piece).text);
        }
        let last = b.finish();
        assert!(!last.spent);
        out.push_str(&last.text);
        assert_eq!(out, reply);
        assert_eq!(b.used(), all.len());
    }
}
