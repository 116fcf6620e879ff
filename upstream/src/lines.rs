//! Splits a byte stream into lines with a bound on a line's length, so an upstream that
//! sends one endless line costs at most the bound in memory. Pure: bytes in, lines out.

/// Lines of a stream, pushed in as the bytes arrive.
#[derive(Debug)]
pub struct LineBuffer {
    pending: Vec<u8>,
    /// Where to look for the next line break (everything before it has none).
    scanned: usize,
    max_line: usize,
}

/// A line longer than the bound, without its end yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineTooLong {
    pub limit: usize,
}

impl LineBuffer {
    pub fn new(max_line: usize) -> Self {
        Self {
            pending: Vec::new(),
            scanned: 0,
            max_line,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next complete line (without `\n` or `\r\n`), if one has arrived. An error once the
    /// unfinished line is over the bound.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, LineTooLong> {
        match self.pending[self.scanned..]
            .iter()
            .position(|&b| b == b'\n')
        {
            Some(at) => {
                let end = self.scanned + at;
                if end > self.max_line {
                    return Err(LineTooLong {
                        limit: self.max_line,
                    });
                }
                let mut line: Vec<u8> = self.pending.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.scanned = 0;
                Ok(Some(line))
            }
            None => {
                self.scanned = self.pending.len();
                if self.pending.len() > self.max_line {
                    return Err(LineTooLong {
                        limit: self.max_line,
                    });
                }
                Ok(None)
            }
        }
    }

    /// What is left at the end of the stream (a last line without a line break).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        self.scanned = 0;
        let rest = std::mem::take(&mut self.pending);
        let rest = rest.strip_suffix(b"\r").map(<[u8]>::to_vec).unwrap_or(rest);
        (!rest.is_empty()).then_some(rest)
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(buf: &mut LineBuffer) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(l) = buf.next_line().unwrap() {
            out.push(String::from_utf8(l).unwrap());
        }
        out
    }

    #[test]
    fn lines_split_across_pushes_come_out_whole() {
        let mut buf = LineBuffer::new(64);
        buf.push(b"data: a\r\n\nda");
        assert_eq!(lines(&mut buf), ["data: a", ""]);
        buf.push(b"ta: b");
        assert_eq!(lines(&mut buf), Vec::<String>::new());
        buf.push(b"\ndata: c");
        assert_eq!(lines(&mut buf), ["data: b"]);
        assert_eq!(buf.finish(), Some(b"data: c".to_vec()));
        assert_eq!(buf.finish(), None);
    }

    #[test]
    fn a_line_over_the_bound_is_an_error_before_it_ends() {
        let mut buf = LineBuffer::new(8);
        buf.push(b"12345678");
        assert_eq!(buf.next_line(), Ok(None));
        buf.push(b"9");
        assert_eq!(buf.next_line(), Err(LineTooLong { limit: 8 }));
        let mut buf = LineBuffer::new(8);
        buf.push(b"123456789\n");
        assert_eq!(buf.next_line(), Err(LineTooLong { limit: 8 }));
        // Exactly the bound is fine.
        let mut buf = LineBuffer::new(8);
        buf.push(b"12345678\nx");
        assert_eq!(buf.next_line(), Ok(Some(b"12345678".to_vec())));
        assert_eq!(buf.held(), 1);
    }

    #[test]
    fn scanning_resumes_where_it_stopped() {
        // Many small pushes of one long line cost linear time, and the line is intact.
        let mut buf = LineBuffer::new(1 << 20);
        for _ in 0..10_000 {
            buf.push(b"abcdefghij");
            assert_eq!(buf.next_line(), Ok(None));
        }
        buf.push(b"\n");
        assert_eq!(buf.next_line().unwrap().unwrap().len(), 100_000);
    }
}
