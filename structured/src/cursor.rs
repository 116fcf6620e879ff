//! Where output stands against a grammar, one byte at a time: a pushdown automaton whose
//! whole state is a small `Copy` value, so that trying a token on it (copy, feed the token's
//! bytes, look) costs no allocation.

use crate::grammar::{Grammar, Node, NodeId};

/// The deepest nesting of objects and arrays output may have.
pub const MAX_DEPTH: usize = 20;
/// The longest run of whitespace between tokens (so a model cannot idle in whitespace
/// forever; pretty-printed JSON a few levels deep fits).
pub const MAX_WHITESPACE: u8 = 24;
/// The most digits a number may have (all its parts together; so that an integer fits a
/// 64-bit signed one).
pub const MAX_DIGITS: u8 = 18;
/// The most digits of an exponent (so every number fits a double: parsers refuse 1e999).
pub const MAX_EXPONENT_DIGITS: u8 = 2;
// Containers nest directly (a value frame becomes its container), so the stack holds the
// open containers and at most one frame above them.
const MAX_STACK: usize = MAX_DEPTH + 2;
const UTF8_A0_BF: u8 = 4;
const UTF8_80_9F: u8 = 8;
const UTF8_90_BF: u8 = 12;
const UTF8_80_8F: u8 = 16;
/// An object's `Colon` phase after a free-form key (not a declared property).
const FREE_KEY: u16 = u16::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObjPhase {
    /// After `{`: a key or `}`.
    Open,
    /// After `,`: a key.
    NeedKey,
    /// After the key of property N (or a free key): `:`.
    Colon(u16),
    /// After a value: `,` or `}`.
    After,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArrPhase {
    Open,
    NeedValue,
    After,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumPhase {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits(u8),
}

impl NumPhase {
    fn terminal(self) -> bool {
        matches!(
            self,
            NumPhase::Zero | NumPhase::Int | NumPhase::Frac | NumPhase::ExpDigits(_)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// A value of this node comes next (whitespace first).
    Value(NodeId),
    Object {
        node: NodeId,
        /// The first declared property not yet written or skipped.
        next: u16,
        phase: ObjPhase,
    },
    Array {
        node: NodeId,
        count: u32,
        phase: ArrPhase,
    },
    /// A declared key being written: the candidates are the parent object's properties
    /// `next + i` for each bit i.
    Key { viable: u64, matched: u16 },
    Str {
        key: bool,
        /// 0: plain; 1: after `\`; 2..=5: that many - 2 hex digits of `\u` read; 6: after
        /// `\uD` (the next digit keeps it off the surrogates).
        escape: u8,
        /// Continuation bytes still owed by a multi-byte UTF-8 character (low two bits) and
        /// the range the next one must fall in (`UTF8_*`, or 0 for 80..BF).
        utf8: u8,
    },
    Num {
        integer: bool,
        phase: NumPhase,
        digits: u8,
    },
    Lit {
        node: NodeId,
        viable: u64,
        matched: u16,
    },
    /// A `Switch` node's head being written: the candidates are its cases i for each bit i.
    Head {
        node: NodeId,
        viable: u64,
        matched: u16,
    },
    /// Case `case` of a `Switch` node: its body has been written, its tail is being.
    Tail {
        node: NodeId,
        case: u16,
        matched: u16,
    },
}

/// A position in output held to a grammar.
#[derive(Debug, Clone, Copy)]
pub struct Cursor {
    stack: [Frame; MAX_STACK],
    len: u8,
    depth: u8,
    whitespace: u8,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

impl Cursor {
    /// At the start of output.
    pub fn new(grammar: &Grammar) -> Cursor {
        let mut stack = [Frame::Value(0); MAX_STACK];
        stack[0] = Frame::Value(grammar.root);
        Cursor {
            stack,
            len: 1,
            depth: 0,
            whitespace: 0,
        }
    }

    /// A whole value has been written: nothing but the end may follow.
    pub fn is_done(&self) -> bool {
        self.len == 0
    }

    /// Output may end here: a whole value has been written, or a top-level number or
    /// literal could end here.
    pub fn can_end(&self, g: &Grammar) -> bool {
        match self.len {
            0 => true,
            1 => self.completes_here(g, self.stack[0]),
            _ => false,
        }
    }

    /// Feeds `bytes`; false (and the cursor left somewhere undefined) if they cannot be
    /// part of a value of the grammar.
    pub fn feed_all(&mut self, g: &Grammar, bytes: &[u8]) -> bool {
        bytes.iter().all(|&b| self.feed(g, b))
    }

    /// Whether `bytes` may come next, without moving.
    pub fn accepts(&self, g: &Grammar, bytes: &[u8]) -> bool {
        let mut probe = *self;
        probe.feed_all(g, bytes)
    }

    fn top(&self) -> Option<Frame> {
        (self.len > 0).then(|| self.stack[self.len as usize - 1])
    }

    fn set_top(&mut self, f: Frame) {
        self.stack[self.len as usize - 1] = f;
    }

    fn push(&mut self, f: Frame) -> bool {
        if self.len as usize >= MAX_STACK {
            return false;
        }
        self.stack[self.len as usize] = f;
        self.len += 1;
        true
    }

    /// The value on top is complete: back to its container (or to the end).
    fn pop(&mut self) {
        if matches!(self.top(), Some(Frame::Object { .. } | Frame::Array { .. })) {
            self.depth -= 1;
        }
        self.len -= 1;
    }

    fn whitespace(&mut self) -> bool {
        if self.whitespace >= MAX_WHITESPACE {
            return false;
        }
        self.whitespace += 1;
        true
    }

    fn completes_here(&self, g: &Grammar, f: Frame) -> bool {
        match f {
            Frame::Num { phase, .. } => phase.terminal(),
            Frame::Lit {
                node,
                viable,
                matched,
            } => literal_complete(g, node, viable, matched),
            _ => false,
        }
    }

    pub fn feed(&mut self, g: &Grammar, b: u8) -> bool {
        loop {
            let Some(top) = self.top() else {
                return false;
            };
            let structural = !matches!(top, Frame::Str { .. });
            if structural && !is_ws(b) {
                self.whitespace = 0;
            }
            match top {
                Frame::Value(node) => {
                    if is_ws(b) {
                        return self.whitespace();
                    }
                    return self.start_value(g, node, b);
                }
                Frame::Object { node, next, phase } => {
                    return self.object_byte(g, node, next, phase, b);
                }
                Frame::Array { node, count, phase } => {
                    let Node::Array { items, min, max } = g.nodes[node as usize] else {
                        return false;
                    };
                    if is_ws(b) {
                        return self.whitespace();
                    }
                    let value_start = g.first[items as usize].contains(b);
                    match phase {
                        ArrPhase::Open | ArrPhase::NeedValue if value_start && count < max => {
                            self.set_top(Frame::Array {
                                node,
                                count: count + 1,
                                phase: ArrPhase::After,
                            });
                            if !self.push(Frame::Value(items)) {
                                return false;
                            }
                            continue; // the byte starts the item
                        }
                        ArrPhase::Open | ArrPhase::After if b == b']' && count >= min => {
                            self.pop();
                            return true;
                        }
                        ArrPhase::After if b == b',' && count < max => {
                            self.set_top(Frame::Array {
                                node,
                                count,
                                phase: ArrPhase::NeedValue,
                            });
                            return true;
                        }
                        _ => return false,
                    }
                }
                Frame::Key { viable, matched } => return self.key_byte(g, viable, matched, b),
                Frame::Head {
                    node,
                    viable,
                    matched,
                } => return self.head_byte(g, node, viable, matched, b),
                Frame::Tail {
                    node,
                    case,
                    matched,
                } => return self.tail_byte(g, node, case, matched, b),
                Frame::Str { key, escape, utf8 } => {
                    let (escape, utf8) = match (escape, utf8) {
                        (0, 0) => match b {
                            b'"' => {
                                self.pop();
                                if key {
                                    let Some(Frame::Object { node, next, .. }) = self.top() else {
                                        return false;
                                    };
                                    self.set_top(Frame::Object {
                                        node,
                                        next,
                                        phase: ObjPhase::Colon(FREE_KEY),
                                    });
                                }
                                return true;
                            }
                            b'\\' => (1, 0),
                            0x00..=0x1f => return false,
                            0x20..=0x7f => (0, 0),
                            // UTF-8 as the standard defines it: no overlong forms, no
                            // surrogates, nothing past U+10FFFF (parsers refuse them).
                            0xc2..=0xdf => (0, 1),
                            0xe0 => (0, 2 | UTF8_A0_BF),
                            0xed => (0, 2 | UTF8_80_9F),
                            0xe1..=0xef => (0, 2),
                            0xf0 => (0, 3 | UTF8_90_BF),
                            0xf4 => (0, 3 | UTF8_80_8F),
                            0xf1..=0xf3 => (0, 3),
                            _ => return false,
                        },
                        (0, u) => {
                            let (lo, hi) = match u & !3 {
                                UTF8_A0_BF => (0xa0, 0xbf),
                                UTF8_80_9F => (0x80, 0x9f),
                                UTF8_90_BF => (0x90, 0xbf),
                                UTF8_80_8F => (0x80, 0x8f),
                                _ => (0x80, 0xbf),
                            };
                            if !(lo..=hi).contains(&b) {
                                return false;
                            }
                            (0, (u & 3) - 1)
                        }
                        (1, _) => match b {
                            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => (0, 0),
                            b'u' => (2, 0),
                            _ => return false,
                        },
                        // `\u` escapes of surrogates (D800-DFFF) are refused: a lone one is
                        // not a character, and pairs are rarely what a model means.
                        (2, _) if matches!(b, b'd' | b'D') => (6, 0),
                        (6, _) => match b {
                            b'0'..=b'7' => (4, 0),
                            _ => return false,
                        },
                        (e, _) => match b {
                            b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                                (if e == 5 { 0 } else { e + 1 }, 0)
                            }
                            _ => return false,
                        },
                    };
                    self.set_top(Frame::Str { key, escape, utf8 });
                    return true;
                }
                Frame::Num {
                    integer,
                    phase,
                    digits,
                } => {
                    let digit = b.is_ascii_digit();
                    let next = match (phase, b) {
                        // `-0` is JSON, but parsers read it as a float: not an integer here.
                        (NumPhase::Minus, b'0') if !integer => Some(NumPhase::Zero),
                        (NumPhase::Minus, b'1'..=b'9') => Some(NumPhase::Int),
                        (NumPhase::Int, b'0'..=b'9') => Some(NumPhase::Int),
                        (NumPhase::Zero | NumPhase::Int, b'.') if !integer => Some(NumPhase::Dot),
                        (NumPhase::Dot | NumPhase::Frac, b'0'..=b'9') => Some(NumPhase::Frac),
                        (NumPhase::Zero | NumPhase::Int | NumPhase::Frac, b'e' | b'E')
                            if !integer =>
                        {
                            Some(NumPhase::Exp)
                        }
                        (NumPhase::Exp, b'+' | b'-') => Some(NumPhase::ExpSign),
                        (NumPhase::Exp | NumPhase::ExpSign, b'0'..=b'9') => {
                            Some(NumPhase::ExpDigits(1))
                        }
                        (NumPhase::ExpDigits(n), b'0'..=b'9') if n < MAX_EXPONENT_DIGITS => {
                            Some(NumPhase::ExpDigits(n + 1))
                        }
                        _ => None,
                    };
                    match next {
                        Some(NumPhase::Dot) if digits >= MAX_DIGITS => return false,
                        Some(phase) => {
                            // The exponent's digits are bounded by their own phase.
                            let mantissa = digit && !matches!(phase, NumPhase::ExpDigits(_));
                            let digits = digits + mantissa as u8;
                            if digits > MAX_DIGITS {
                                return false;
                            }
                            self.set_top(Frame::Num {
                                integer,
                                phase,
                                digits,
                            });
                            return true;
                        }
                        None if phase.terminal() => {
                            self.pop();
                            continue; // the byte belongs to what follows the number
                        }
                        None => return false,
                    }
                }
                Frame::Lit {
                    node,
                    viable,
                    matched,
                } => {
                    let Node::Literals(values) = &g.nodes[node as usize] else {
                        return false;
                    };
                    let m = matched as usize;
                    let mut next = 0u64;
                    for (i, v) in values.iter().enumerate() {
                        if viable & (1 << i) != 0 && v.get(m) == Some(&b) {
                            next |= 1 << i;
                        }
                    }
                    if next == 0 {
                        if literal_complete(g, node, viable, matched) {
                            self.pop();
                            continue; // the byte belongs to what follows
                        }
                        return false;
                    }
                    let matched = matched + 1;
                    let longer = values
                        .iter()
                        .enumerate()
                        .any(|(i, v)| next & (1 << i) != 0 && v.len() > matched as usize);
                    if longer {
                        self.set_top(Frame::Lit {
                            node,
                            viable: next,
                            matched,
                        });
                    } else {
                        self.pop();
                    }
                    return true;
                }
            }
        }
    }

    fn head_byte(&mut self, g: &Grammar, node: NodeId, viable: u64, matched: u16, b: u8) -> bool {
        let Node::Switch(cases) = &g.nodes[node as usize] else {
            return false;
        };
        let m = matched as usize;
        let mut still = 0u64;
        let mut done = None;
        for (i, case) in cases.iter().enumerate() {
            if viable & (1 << i) != 0 && case.head.get(m) == Some(&b) {
                still |= 1 << i;
                if case.head.len() == m + 1 {
                    done = Some(i);
                }
            }
        }
        match done {
            // No head is a prefix of another: a whole head is the only candidate left.
            Some(i) if cases[i].tail.is_empty() => {
                self.set_top(Frame::Value(cases[i].body));
                true
            }
            Some(i) => {
                self.set_top(Frame::Tail {
                    node,
                    case: i as u16,
                    matched: 0,
                });
                self.push(Frame::Value(cases[i].body))
            }
            None if still != 0 => {
                self.set_top(Frame::Head {
                    node,
                    viable: still,
                    matched: matched + 1,
                });
                true
            }
            None => false,
        }
    }

    fn tail_byte(&mut self, g: &Grammar, node: NodeId, case: u16, matched: u16, b: u8) -> bool {
        let Node::Switch(cases) = &g.nodes[node as usize] else {
            return false;
        };
        let tail = &cases[case as usize].tail;
        if tail.get(matched as usize) != Some(&b) {
            return false;
        }
        if matched as usize + 1 == tail.len() {
            self.pop();
        } else {
            self.set_top(Frame::Tail {
                node,
                case,
                matched: matched + 1,
            });
        }
        true
    }

    fn start_value(&mut self, g: &Grammar, node: NodeId, b: u8) -> bool {
        if !g.first[node as usize].contains(b) {
            return false;
        }
        match &g.nodes[node as usize] {
            Node::Object { .. } | Node::Array { .. } => {
                if self.depth as usize >= MAX_DEPTH {
                    return false;
                }
                self.depth += 1;
                self.set_top(if b == b'{' {
                    Frame::Object {
                        node,
                        next: 0,
                        phase: ObjPhase::Open,
                    }
                } else {
                    Frame::Array {
                        node,
                        count: 0,
                        phase: ArrPhase::Open,
                    }
                });
                true
            }
            Node::String => {
                self.set_top(Frame::Str {
                    key: false,
                    escape: 0,
                    utf8: 0,
                });
                true
            }
            Node::Number { integer } => {
                let phase = match b {
                    b'-' => NumPhase::Minus,
                    b'0' => NumPhase::Zero,
                    _ => NumPhase::Int,
                };
                self.set_top(Frame::Num {
                    integer: *integer,
                    phase,
                    digits: (b != b'-') as u8,
                });
                true
            }
            Node::Literals(values) => {
                let viable = values
                    .iter()
                    .enumerate()
                    .fold(0u64, |m, (i, _)| m | (1 << i));
                self.set_top(Frame::Lit {
                    node,
                    viable,
                    matched: 0,
                });
                self.feed(g, b)
            }
            Node::Switch(cases) => {
                self.set_top(Frame::Head {
                    node,
                    viable: (0..cases.len()).fold(0u64, |m, i| m | (1 << i)),
                    matched: 0,
                });
                self.feed(g, b)
            }
            Node::Union(branches) => {
                let Some(&branch) = branches
                    .iter()
                    .find(|&&br| g.first[br as usize].contains(b))
                else {
                    return false;
                };
                self.start_value(g, branch, b)
            }
            Node::Pending => false,
        }
    }

    fn object_byte(
        &mut self,
        g: &Grammar,
        node: NodeId,
        next: u16,
        phase: ObjPhase,
        b: u8,
    ) -> bool {
        let Node::Object { props, extra } = &g.nodes[node as usize] else {
            return false;
        };
        if is_ws(b) {
            return self.whitespace();
        }
        let declared = !props.is_empty();
        let next_usize = next as usize;
        // Declared properties left that must still come.
        let required_left = props[next_usize.min(props.len())..]
            .iter()
            .any(|p| p.required);
        let keys_left = if declared {
            next_usize < props.len()
        } else {
            extra.is_some()
        };
        let set = |phase| Frame::Object { node, next, phase };
        match (phase, b) {
            (ObjPhase::Open | ObjPhase::After, b'}') if !required_left => {
                self.pop();
                true
            }
            (ObjPhase::After, b',') if keys_left => {
                self.set_top(set(ObjPhase::NeedKey));
                true
            }
            (ObjPhase::Open | ObjPhase::NeedKey, b'"') if keys_left => {
                if !declared {
                    self.push(Frame::Str {
                        key: true,
                        escape: 0,
                        utf8: 0,
                    })
                } else {
                    // Candidates: from `next` up to and including the next required one.
                    let mut viable = 0u64;
                    for (i, p) in props[next_usize..].iter().enumerate() {
                        viable |= 1 << i;
                        if p.required {
                            break;
                        }
                    }
                    self.push(Frame::Key { viable, matched: 1 })
                }
            }
            (ObjPhase::Colon(prop), b':') => {
                let value = if prop == FREE_KEY {
                    match extra {
                        Some(v) => *v,
                        None => return false,
                    }
                } else {
                    props[prop as usize].node
                };
                self.set_top(set(ObjPhase::After));
                self.push(Frame::Value(value))
            }
            _ => false,
        }
    }

    fn key_byte(&mut self, g: &Grammar, viable: u64, matched: u16, b: u8) -> bool {
        let Some(Frame::Object { node, next, .. }) =
            self.len.checked_sub(2).map(|i| self.stack[i as usize])
        else {
            return false;
        };
        let Node::Object { props, .. } = &g.nodes[node as usize] else {
            return false;
        };
        let m = matched as usize;
        let mut still = 0u64;
        let mut done = None;
        for (i, p) in props[next as usize..].iter().enumerate().take(64) {
            if viable & (1 << i) != 0 && p.key.get(m) == Some(&b) {
                still |= 1 << i;
                if p.key.len() == m + 1 {
                    done = Some(i);
                }
            }
        }
        if still == 0 {
            return false;
        }
        match done {
            // A key ends with its closing quote, which no other key has at that place.
            Some(i) => {
                let prop = next + i as u16;
                self.len -= 1;
                self.set_top(Frame::Object {
                    node,
                    next: prop + 1,
                    phase: ObjPhase::Colon(prop),
                });
            }
            None => self.set_top(Frame::Key {
                viable: still,
                matched: matched + 1,
            }),
        }
        true
    }
}

fn literal_complete(g: &Grammar, node: NodeId, viable: u64, matched: u16) -> bool {
    let Node::Literals(values) = &g.nodes[node as usize] else {
        return false;
    };
    values
        .iter()
        .enumerate()
        .any(|(i, v)| viable & (1 << i) != 0 && v.len() == matched as usize)
}
