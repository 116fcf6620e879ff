//! Structured output: what a reply must look like (`response_format`), and whether a token
//! may come next.
//!
//! A JSON Schema, or "any JSON object", is compiled to a [`Grammar`]; a [`Cursor`] follows
//! output through it a byte at a time; a [`Constraint`] holds one reply's cursor and says
//! which tokens of a model's vocabulary keep the reply on the grammar (and when the reply
//! must, or may, end). Pure: no I/O, no model.

mod cursor;
mod grammar;

use std::sync::Arc;

pub use cursor::{Cursor, MAX_DEPTH, MAX_DIGITS, MAX_EXPONENT_DIGITS, MAX_WHITESPACE};
pub use grammar::{Grammar, SchemaError, MAX_CHOICES, MAX_NODES};

/// The bytes each token id stands for (empty for special tokens, which constrained output
/// never contains).
#[derive(Debug, Clone, Default)]
pub struct Vocabulary {
    tokens: Vec<Box<[u8]>>,
}

impl Vocabulary {
    pub fn new(tokens: Vec<Vec<u8>>) -> Self {
        Self {
            tokens: tokens.into_iter().map(Vec::into_boxed_slice).collect(),
        }
    }

    pub fn bytes(&self, id: u32) -> &[u8] {
        self.tokens.get(id as usize).map_or(&[], |b| b)
    }
}

/// One reply held to a grammar.
#[derive(Debug, Clone)]
pub struct Constraint {
    grammar: Arc<Grammar>,
    vocab: Arc<Vocabulary>,
    eos: Vec<u32>,
    cursor: Cursor,
}

impl Constraint {
    /// `eos`: the ids that end a reply (allowed only where output may end).
    pub fn new(grammar: Arc<Grammar>, vocab: Arc<Vocabulary>, eos: Vec<u32>) -> Self {
        let cursor = Cursor::new(&grammar);
        Self {
            grammar,
            vocab,
            eos,
            cursor,
        }
    }

    /// Whether token `id` may come next.
    pub fn allows(&self, id: u32) -> bool {
        if self.eos.contains(&id) {
            return self.cursor.can_end(&self.grammar);
        }
        let bytes = self.vocab.bytes(id);
        !bytes.is_empty() && !self.cursor.is_done() && self.cursor.accepts(&self.grammar, bytes)
    }

    /// Sets every token that may not come next to minus infinity. Returns how many may.
    pub fn mask(&self, logits: &mut [f32]) -> usize {
        let mut allowed = 0;
        for (id, v) in logits.iter_mut().enumerate() {
            if self.allows(id as u32) {
                allowed += 1;
            } else {
                *v = f32::NEG_INFINITY;
            }
        }
        allowed
    }

    /// Moves past token `id` (which [`Self::allows`] accepted).
    pub fn advance(&mut self, id: u32) {
        if self.eos.contains(&id) {
            return;
        }
        let bytes = self.vocab.bytes(id);
        let ok = self.cursor.feed_all(&self.grammar, bytes);
        debug_assert!(ok, "advance past a token the grammar refuses");
    }

    /// A token that ends the reply, if the model has one.
    pub fn end_token(&self) -> Option<u32> {
        self.eos.first().copied()
    }

    /// A whole value has been written.
    pub fn is_done(&self) -> bool {
        self.cursor.is_done()
    }
}

#[cfg(test)]
mod tests;
