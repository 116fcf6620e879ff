//! Finding code in text: fenced markdown blocks (``` or ~~~, with or without an info string),
//! indented blocks, and whole inputs that are code. One line-based state machine serves both
//! the one-shot scan and the incremental stream scanner, so both report the same blocks at the
//! same positions.

/// A block of code found in the text. Positions are in the whole text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CodeBlock {
    /// The fence's info string (first word), if any.
    pub tag: Option<String>,
    pub kind: BlockKind,
    /// Byte offset in the text of the code's first line.
    pub start_byte: usize,
    /// 0-based line index in the text of the code's first line.
    pub start_line: usize,
    /// Byte offset in the text of each line of `code` (indented blocks lose their indentation,
    /// so offsets within the code and the text differ by line).
    pub line_starts: Vec<usize>,
    /// The code, with the indentation removed.
    pub code: String,
    /// False for a fence still open at the end of the text.
    pub closed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    Fenced,
    Indented,
    Whole,
}

#[derive(Debug)]
enum State {
    /// `after_prose`: the last non-blank line was prose (a sentence), which is what makes an
    /// indented block after a blank line code rather than the continuation of code.
    Prose {
        previous_blank: bool,
        previous_list: bool,
        after_prose: bool,
    },
    Fenced {
        fence: char,
        len: usize,
        tag: Option<String>,
        start_byte: usize,
        start_line: usize,
        code: String,
        line_starts: Vec<usize>,
    },
    Indented {
        start_byte: usize,
        start_line: usize,
        code: String,
        trailing_blank: usize,
        line_starts: Vec<usize>,
    },
}

/// Feeds whole lines; emits blocks as they close.
#[derive(Debug)]
pub struct Extractor {
    state: State,
    line_no: usize,
    byte: usize,
    blocks_seen: usize,
    fenced_seen: usize,
}

impl Default for Extractor {
    fn default() -> Self {
        Self {
            state: State::Prose {
                previous_blank: true,
                previous_list: false,
                after_prose: false,
            },
            line_no: 0,
            byte: 0,
            blocks_seen: 0,
            fenced_seen: 0,
        }
    }
}

fn fence_open(line: &str) -> Option<(char, usize, Option<String>)> {
    let trimmed = line.trim_start_matches(' ');
    if line.len() - trimmed.len() > 3 {
        return None;
    }
    let fence = trimmed.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = trimmed.chars().take_while(|c| *c == fence).count();
    if len < 3 {
        return None;
    }
    let info = trimmed[len..].trim();
    if fence == '`' && info.contains('`') {
        return None; // inline code such as ```x``` is not a fence
    }
    let tag = info
        .split_whitespace()
        .next()
        .map(str::to_string)
        .filter(|t| !t.is_empty());
    Some((fence, len, tag))
}

fn fence_close(line: &str, fence: char, len: usize) -> bool {
    let trimmed = line.trim();
    let n = trimmed.chars().take_while(|c| *c == fence).count();
    n >= len
        && trimmed.chars().all(|c| c == fence)
        && line.len() - line.trim_start_matches(' ').len() <= 3
}

fn indent_width(line: &str) -> Option<usize> {
    if line.starts_with('\t') {
        Some(1)
    } else if line.starts_with("    ") {
        Some(4)
    } else {
        None
    }
}

/// A sentence rather than code: several words, ending like a sentence, not like a statement.
pub(crate) fn looks_like_prose(line: &str) -> bool {
    let t = line.trim();
    let words = t
        .split_whitespace()
        .filter(|w| {
            w.chars()
                .all(|c| c.is_alphabetic() || ",.:;!?'\"()".contains(c))
        })
        .count();
    let ends_like_code = t.ends_with([
        '{', '}', ';', ')', '(', '[', ']', '=', '\\', '>', ',', '&', '|',
    ]);
    (words >= 3 || (words >= 1 && t.ends_with(':'))) && !ends_like_code
}

fn is_list_item(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("- ") || t.starts_with("* ") || t.starts_with("+ ") || {
        let digits = t.chars().take_while(char::is_ascii_digit).count();
        digits > 0 && (t[digits..].starts_with(". ") || t[digits..].starts_with(") "))
    }
}

impl Extractor {
    /// One line of text, including its line break if it has one.
    pub fn push_line(&mut self, line: &str) -> Option<CodeBlock> {
        let content = line.trim_end_matches(['\n', '\r']);
        let line_start = self.byte;
        let line_no = self.line_no;
        self.byte += line.len();
        self.line_no += 1;
        let blank = content.trim().is_empty();
        let state = std::mem::replace(
            &mut self.state,
            State::Prose {
                previous_blank: blank,
                previous_list: false,
                after_prose: false,
            },
        );
        let (next, out) = match state {
            State::Prose {
                previous_blank,
                previous_list,
                after_prose,
            } => {
                if let Some((fence, len, tag)) = fence_open(content) {
                    let s = State::Fenced {
                        fence,
                        len,
                        tag,
                        start_byte: self.byte,
                        start_line: line_no + 1,
                        code: String::new(),
                        line_starts: Vec::new(),
                    };
                    (s, None)
                } else if let (Some(w), true, false, false, true) = (
                    indent_width(content),
                    previous_blank,
                    previous_list,
                    blank,
                    after_prose,
                ) {
                    let s = State::Indented {
                        start_byte: line_start,
                        start_line: line_no,
                        code: format!("{}\n", &content[w..]),
                        trailing_blank: 0,
                        line_starts: vec![line_start + w],
                    };
                    (s, None)
                } else {
                    let list = is_list_item(content)
                        || (previous_list && (blank || content.starts_with([' ', '\t'])));
                    let after_prose = if blank {
                        after_prose
                    } else {
                        looks_like_prose(content)
                    };
                    (
                        State::Prose {
                            previous_blank: blank,
                            previous_list: list,
                            after_prose,
                        },
                        None,
                    )
                }
            }
            State::Fenced {
                fence,
                len,
                tag,
                start_byte,
                start_line,
                mut code,
                mut line_starts,
            } => {
                if fence_close(content, fence, len) {
                    let block = CodeBlock {
                        tag,
                        kind: BlockKind::Fenced,
                        start_byte,
                        start_line,
                        line_starts,
                        code,
                        closed: true,
                    };
                    (
                        State::Prose {
                            previous_blank: true,
                            previous_list: false,
                            after_prose: false,
                        },
                        Some(block),
                    )
                } else {
                    code.push_str(content);
                    code.push('\n');
                    line_starts.push(line_start);
                    (
                        State::Fenced {
                            fence,
                            len,
                            tag,
                            start_byte,
                            start_line,
                            code,
                            line_starts,
                        },
                        None,
                    )
                }
            }
            State::Indented {
                start_byte,
                start_line,
                mut code,
                trailing_blank,
                mut line_starts,
            } => {
                if blank {
                    code.push('\n');
                    line_starts.push(line_start);
                    (
                        State::Indented {
                            start_byte,
                            start_line,
                            code,
                            trailing_blank: trailing_blank + 1,
                            line_starts,
                        },
                        None,
                    )
                } else if let Some(w) = indent_width(content) {
                    code.push_str(&content[w..]);
                    code.push('\n');
                    line_starts.push(line_start + w);
                    (
                        State::Indented {
                            start_byte,
                            start_line,
                            code,
                            trailing_blank: 0,
                            line_starts,
                        },
                        None,
                    )
                } else {
                    let block =
                        finish_indented(start_byte, start_line, code, trailing_blank, line_starts);
                    // The line that ended the block is prose; run it through the prose state.
                    self.state = State::Prose {
                        previous_blank: trailing_blank > 0,
                        previous_list: false,
                        after_prose: true,
                    };
                    self.byte = line_start;
                    self.line_no = line_no;
                    let again = self.push_line(line);
                    debug_assert!(again.is_none());
                    self.blocks_seen += 1;
                    return Some(block);
                }
            }
        };
        self.state = next;
        if let Some(block) = &out {
            self.blocks_seen += 1;
            if block.kind == BlockKind::Fenced {
                self.fenced_seen += 1;
            }
        }
        out
    }

    /// Ends the text: an open fence or indented block is emitted (`closed: false` for a fence).
    pub fn finish(&mut self) -> Option<CodeBlock> {
        let state = std::mem::replace(
            &mut self.state,
            State::Prose {
                previous_blank: true,
                previous_list: false,
                after_prose: false,
            },
        );
        let out = match state {
            State::Prose { .. } => None,
            State::Fenced {
                tag,
                start_byte,
                start_line,
                code,
                line_starts,
                ..
            } => Some(CodeBlock {
                tag,
                kind: BlockKind::Fenced,
                start_byte,
                start_line,
                line_starts,
                code,
                closed: false,
            }),
            State::Indented {
                start_byte,
                start_line,
                code,
                trailing_blank,
                line_starts,
            } => Some(finish_indented(
                start_byte,
                start_line,
                code,
                trailing_blank,
                line_starts,
            )),
        };
        if let Some(block) = &out {
            self.blocks_seen += 1;
            if block.kind == BlockKind::Fenced {
                self.fenced_seen += 1;
            }
        }
        out
    }

    /// Blocks emitted so far.
    /// Where the code of the block still open begins (a fenced block whose closing fence has
    /// not arrived, or an indented block), as a byte offset in the text fed so far.
    pub fn open_block_start(&self) -> Option<usize> {
        match &self.state {
            State::Fenced { start_byte, .. } | State::Indented { start_byte, .. } => {
                Some(*start_byte)
            }
            State::Prose { .. } => None,
        }
    }

    pub fn blocks_seen(&self) -> usize {
        self.blocks_seen
    }

    /// Fenced blocks emitted so far.
    pub fn fenced_seen(&self) -> usize {
        self.fenced_seen
    }
}

fn finish_indented(
    start_byte: usize,
    start_line: usize,
    mut code: String,
    trailing_blank: usize,
    mut line_starts: Vec<usize>,
) -> CodeBlock {
    for _ in 0..trailing_blank {
        code.pop();
        line_starts.pop();
    }
    CodeBlock {
        tag: None,
        kind: BlockKind::Indented,
        start_byte,
        start_line,
        line_starts,
        code,
        closed: true,
    }
}

/// Every block of a complete text, in order.
pub fn extract_blocks(text: &str) -> Vec<CodeBlock> {
    let mut ex = Extractor::default();
    let mut out: Vec<CodeBlock> = text
        .split_inclusive('\n')
        .filter_map(|l| ex.push_line(l))
        .collect();
    out.extend(ex.finish());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fenced_blocks_with_and_without_tags() {
        let text = "Here:\n```python\nimport os\nos.system(x)\n```\nand\n~~~\nplain\n~~~\n";
        let blocks = extract_blocks(text);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].tag.as_deref(), Some("python"));
        assert_eq!(blocks[0].code, "import os\nos.system(x)\n");
        assert_eq!(blocks[0].start_line, 2);
        assert_eq!(
            &text[blocks[0].start_byte..blocks[0].start_byte + 9],
            "import os"
        );
        assert_eq!(blocks[1].tag, None);
        assert_eq!(blocks[1].code, "plain\n");
    }

    #[test]
    fn longer_fences_need_longer_closers() {
        let text = "````md\n```c\nx\n```\n````\n";
        let blocks = extract_blocks(text);
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].code, "```c\nx\n```\n");
    }

    #[test]
    fn unclosed_fence_is_emitted_at_the_end() {
        let blocks = extract_blocks("text\n```js\neval(x)");
        assert_eq!(blocks.len(), 1);
        assert!(!blocks[0].closed);
        assert_eq!(blocks[0].code, "eval(x)\n");
    }

    #[test]
    fn indented_blocks_after_a_blank_line() {
        let text = "Run this:\n\n    import pickle\n\n    pickle.loads(d)\n\nDone.\n";
        let blocks = extract_blocks(text);
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].kind, BlockKind::Indented);
        assert_eq!(blocks[0].code, "import pickle\n\npickle.loads(d)\n");
        assert_eq!(blocks[0].start_line, 2);
        assert_eq!(
            blocks[0].line_starts,
            vec![
                text.find("import").unwrap(),
                text.find("\n\n    pickle").unwrap() + 1,
                text.find("pickle.loads").unwrap()
            ]
        );
    }

    #[test]
    fn list_continuations_are_not_code() {
        let text = "- item one\n\n    still the item\n";
        assert!(extract_blocks(text).is_empty());
    }

    #[test]
    fn indented_code_after_code_is_not_a_markdown_block() {
        let text =
            "    if (x) {\n        strcpy(a, b);\n#if FOO\n        strcat(a, c);\n#endif\n    }\n";
        assert!(extract_blocks(text).is_empty());
    }

    #[test]
    fn inline_triple_backticks_are_not_fences() {
        assert!(extract_blocks("use ```x``` inline\n").is_empty());
    }
}
