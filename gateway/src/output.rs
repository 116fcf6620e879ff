//! The output checks of one reply as a pure state machine: text goes in as it arrives,
//! the shield's and the guard's results go in as they come back, and the machine answers
//! what may be released now, what is still held and whether the reply is blocked. No I/O,
//! no clock, no threads: the server's drivers run the checks and feed their results in, and
//! a whole (non-streamed) reply is the same machine released once, at the end, so whole
//! and streamed replies get the same decision by construction.
//!
//! The release rule (a byte leaves only when every check on has cleared it):
//! - **shield**: the text before the shield scanner's `unscanned_from` (code, fenced or
//!   not, is held until its block is complete and scanned);
//! - **guard**: the text up to a scored prefix minus `hold_back_tokens`, only while that
//!   prefix's P(unsafe) is below the policy's release threshold (stricter than the block
//!   threshold); a climbing score holds the text at the last calm point;
//! - **the last piece** of the text leaves only once the final verdicts on the whole reply
//!   are known, so a reply that is blocked is never visible in full.
//!
//! Only the verdict on the whole reply blocks (a prefix can read worse cut short than
//! whole); a shield finding that blocks is final as soon as its block is scanned.
//!
//! "Tokens" here are pieces of the reply counted the same way whatever the source: each
//! delta ends a piece, and so does each word inside a delta and every 16 bytes without a
//! space (an upstream that sends ten
//! words per delta holds back as much text as an engine sending one token per delta).

use std::sync::Arc;
use std::time::Duration;

use safegate_policies::{decide, Decision, Policy, Stage, Verdict};
use safegate_shield::Finding;

/// Longest run of bytes counted as one piece when no space splits it (a long identifier or
/// an encoded blob still counts as several tokens).
const MAX_PIECE_BYTES: usize = 16;

/// How a request ended: the bounded `outcome` label of metrics and audit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered: the reply, or a refusal that was not a block.
    Ok,
    /// A policy blocked the request or the reply (`content_filter`).
    Blocked,
    /// The client went away before the end.
    ClientClosed,
    /// Overload: a full queue or a rate limit (429).
    Rejected,
    ClientError,
    ServerError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Blocked => "blocked",
            Outcome::ClientClosed => "client_closed",
            Outcome::Rejected => "rejected",
            Outcome::ClientError => "client_error",
            Outcome::ServerError => "server_error",
        }
    }

    /// The outcome of a request that failed with this HTTP status and error code.
    pub fn of_error(status: u16, code: Option<&str>) -> Outcome {
        match (code, status) {
            (Some("content_filter"), _) => Outcome::Blocked,
            (_, 429) => Outcome::Rejected,
            (_, s) if s < 500 => Outcome::ClientError,
            _ => Outcome::ServerError,
        }
    }
}

/// The output checks of one reply.
#[derive(Debug)]
pub struct OutputChecks {
    policy: Arc<Policy>,
    guard_on: bool,
    shield_on: bool,
    text: String,
    /// Byte end of each piece of the text (see the module comment).
    piece_ends: Vec<usize>,
    /// The generation has ended: no more text.
    complete: bool,
    /// Bytes before this offset have been judged by the shield.
    shield_clear: usize,
    shield_spent: Duration,
    shield_done: bool,
    findings: Vec<Finding>,
    /// Pieces the guard had seen at its last score of a prefix.
    scored_pieces: usize,
    /// Bytes the guard's prefix scores have cleared.
    guard_clear: usize,
    /// The guard's verdict on the whole reply (None: not yet, or the guard failed open).
    verdict: Option<Verdict>,
    judged: bool,
    /// Tools called that the policy does not allow.
    tools_refused: Vec<String>,
    blocked: Option<Decision>,
    released: usize,
}

impl OutputChecks {
    /// `guard_on`: a guard is loaded and the policy's output stage is on; `shield_on`: the
    /// policy's shield is on.
    pub fn new(policy: Arc<Policy>, guard_on: bool, shield_on: bool) -> Self {
        Self {
            policy,
            guard_on,
            shield_on,
            text: String::new(),
            piece_ends: Vec::new(),
            complete: false,
            shield_clear: 0,
            shield_spent: Duration::ZERO,
            shield_done: !shield_on,
            findings: Vec::new(),
            scored_pieces: 0,
            guard_clear: 0,
            verdict: None,
            judged: !guard_on,
            tools_refused: Vec::new(),
            blocked: None,
            released: 0,
        }
    }

    /// The reply's tool calls were checked (once it is complete): the shield's findings in
    /// their arguments, and the tools called that the policy does not allow.
    pub fn tools_checked(&mut self, findings: Vec<Finding>, refused: Vec<String>) {
        self.findings.extend(findings);
        self.tools_refused = refused;
        self.update_block();
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    pub fn shield_on(&self) -> bool {
        self.shield_on
    }

    /// The reply so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Pieces of the reply so far.
    pub fn pieces(&self) -> usize {
        self.piece_ends.len()
    }

    /// Appends generated text. Text after the end or after a block is ignored.
    pub fn push(&mut self, delta: &str) {
        if self.complete || self.blocked.is_some() {
            return;
        }
        let base = self.text.len();
        self.text.push_str(delta);
        let mut piece_start = 0;
        let mut prev_space = false;
        let mut word_seen = false;
        for (i, c) in delta.char_indices() {
            let space = c.is_whitespace();
            // A second word in the same delta begins a new piece.
            let next_word = !space && prev_space && word_seen;
            let too_long = i - piece_start >= MAX_PIECE_BYTES;
            if (next_word || too_long) && i > piece_start {
                self.piece_ends.push(base + i);
                piece_start = i;
            }
            word_seen |= !space;
            prev_space = space;
        }
        if delta.len() > piece_start {
            self.piece_ends.push(base + delta.len());
        }
    }

    /// The generation ended: the text is complete.
    pub fn complete(&mut self) {
        self.complete = true;
    }

    /// The shield's time left for this reply (`shield.timeout_ms`, all scans together).
    pub fn shield_time_left(&self) -> Duration {
        Duration::from_millis(self.policy.shield.timeout_ms).saturating_sub(self.shield_spent)
    }

    /// The shield scanned more of the stream: text before `unscanned_from` is judged, and
    /// these findings (of blocks that closed) are new. A finding that blocks ends the reply.
    pub fn shield_progress(
        &mut self,
        unscanned_from: usize,
        findings: Vec<Finding>,
        spent: Duration,
    ) {
        if !self.shield_on || self.shield_done {
            return;
        }
        self.shield_spent += spent;
        self.shield_clear = self.shield_clear.max(unscanned_from.min(self.text.len()));
        self.findings.extend(findings);
        self.update_block();
    }

    /// The shield finished the whole reply: its full report replaces the partial findings.
    pub fn shield_finished(&mut self, findings: Vec<Finding>, spent: Duration) {
        if !self.shield_on || self.shield_done {
            return;
        }
        self.shield_spent += spent;
        self.findings = findings;
        self.shield_clear = self.text.len();
        self.shield_done = true;
        self.update_block();
    }

    /// The shield could not judge the reply and the policy fails open: the reply is
    /// released as if no code had been found. (Failing closed is the driver's error.)
    pub fn shield_failed_open(&mut self) {
        self.shield_on = false;
        self.shield_done = true;
    }

    /// Whether the guard should score the reply so far (every `rescore_every_tokens`
    /// pieces while the reply is still coming).
    pub fn rescore_due(&self) -> bool {
        self.guard_on
            && !self.complete
            && self.blocked.is_none()
            && self.pieces() - self.scored_pieces
                >= self.policy.streaming.rescore_every_tokens.max(1) as usize
    }

    /// The guard scored the first `pieces` pieces of the reply (None: it failed open).
    /// A calm score clears that prefix minus the hold-back; a prefix never blocks.
    pub fn prefix_scored(&mut self, pieces: usize, verdict: Option<&Verdict>) {
        if !self.guard_on || self.judged {
            return;
        }
        let pieces = pieces.min(self.pieces());
        self.scored_pieces = self.scored_pieces.max(pieces);
        let calm = verdict.is_none_or(|v| v.p_unsafe < self.policy.release_threshold());
        if calm {
            let hold = self.policy.streaming.hold_back_tokens as usize;
            let cleared = match pieces.saturating_sub(hold) {
                0 => 0,
                n => self.piece_ends[n - 1],
            };
            self.guard_clear = self.guard_clear.max(cleared);
        }
    }

    /// Whether the guard's verdict on the whole reply is still wanted.
    pub fn final_score_due(&self) -> bool {
        self.guard_on && self.complete && !self.judged && self.blocked.is_none()
    }

    /// The guard's verdict on the whole reply (None: it failed open).
    pub fn final_scored(&mut self, verdict: Option<Verdict>) {
        if !self.guard_on || self.judged {
            return;
        }
        self.verdict = verdict;
        self.judged = true;
        self.update_block();
    }

    fn update_block(&mut self) {
        if self.blocked.is_none() {
            let d = self.decision();
            if d.blocked() {
                self.blocked = Some(d);
            }
        }
    }

    /// The blocking decision, once there is one.
    pub fn blocked(&self) -> Option<&Decision> {
        self.blocked.as_ref()
    }

    /// Every check has judged the whole reply (or a check blocked it).
    pub fn settled(&self) -> bool {
        self.blocked.is_some() || (self.complete && self.judged && self.shield_done)
    }

    /// The output decision on what the checks have seen (final once `settled`).
    pub fn decision(&self) -> Decision {
        let mut d = decide(
            &self.policy,
            Stage::Output,
            self.verdict.as_ref(),
            &self.findings,
        );
        let action = self.policy.tools.action;
        for name in &self.tools_refused {
            d.escalate(
                safegate_policies::Reason::ToolNotAllowed {
                    name: name.clone(),
                    action,
                },
                action,
                &self.policy.output.message,
            );
        }
        d
    }

    pub fn verdict(&self) -> Option<&Verdict> {
        self.verdict.as_ref()
    }

    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// Byte offset up to which the text may be released now.
    pub fn releasable(&self) -> usize {
        if self.blocked.is_some() {
            return self.released;
        }
        if self.settled() || (!self.guard_on && !self.shield_on) {
            return self.text.len();
        }
        let shield = if self.shield_on {
            self.shield_clear
        } else {
            self.text.len()
        };
        let guard = if self.guard_on {
            self.guard_clear
        } else {
            self.text.len()
        };
        // The last piece waits for the final verdicts.
        let before_last = match self.piece_ends.len() {
            0 | 1 => 0,
            n => self.piece_ends[n - 2],
        };
        let mut upto = shield.min(guard).min(before_last);
        while !self.text.is_char_boundary(upto) {
            upto -= 1;
        }
        upto.max(self.released)
    }

    /// Takes the text that may be released now (empty when nothing new is cleared).
    pub fn release(&mut self) -> &str {
        let from = self.released;
        self.released = self.releasable();
        &self.text[from..self.released]
    }

    /// How the reply ended, once settled: blocked or answered.
    pub fn outcome(&self) -> Outcome {
        if self.blocked.is_some() {
            Outcome::Blocked
        } else {
            Outcome::Ok
        }
    }

    /// Bytes of the reply released so far.
    pub fn released(&self) -> usize {
        self.released
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use safegate_policies::PolicySet;
    use safegate_shield::Shield;

    fn policy(extra: &str) -> Arc<Policy> {
        let yaml = format!("name: default\n{extra}");
        let files = vec![("default.yaml".to_string(), yaml)];
        let set = PolicySet::from_files(&files, Shield::embedded()).unwrap();
        set.policies["default"].clone()
    }

    fn verdict(p: f64) -> Verdict {
        Verdict {
            p_unsafe: p,
            ..Default::default()
        }
    }

    fn finding() -> Finding {
        Finding {
            rule: "py.os-shell".into(),
            cwe: "CWE-78".into(),
            severity: safegate_shield::Severity::Error,
            message: "shell".into(),
            language: None,
            line: 1,
            column: 1,
            end_line: 1,
            end_column: 2,
            start_byte: 0,
            end_byte: 1,
        }
    }

    #[test]
    fn pieces_are_words_whatever_the_delta_size() {
        let mut one = OutputChecks::new(policy(""), true, false);
        for d in [" The", " capital", " of", " France"] {
            one.push(d);
        }
        let mut all = OutputChecks::new(policy(""), true, false);
        all.push(" The capital of France");
        assert_eq!(one.pieces(), 4);
        assert_eq!(all.pieces(), 4);
        let mut blob = OutputChecks::new(policy(""), true, false);
        blob.push(&"A".repeat(40));
        assert_eq!(blob.pieces(), 3);
    }

    #[test]
    fn nothing_leaves_before_a_calm_score_and_the_tail_waits_for_the_verdict() {
        let p = policy("streaming: { rescore_every_tokens: 4, hold_back_tokens: 2 }\n");
        let mut m = OutputChecks::new(p, true, false);
        for w in ["one ", "two ", "three ", "four "] {
            m.push(w);
        }
        assert_eq!(m.release(), "");
        assert!(m.rescore_due());
        m.prefix_scored(4, Some(&verdict(0.01)));
        assert_eq!(m.release(), "one two ");
        m.push("five");
        m.complete();
        assert!(m.final_score_due());
        assert_eq!(m.release(), "");
        m.final_scored(Some(verdict(0.02)));
        assert_eq!(m.release(), "three four five");
        assert!(m.settled() && m.blocked().is_none());
    }

    #[test]
    fn a_climbing_score_holds_at_the_last_calm_point() {
        let p = policy("streaming: { rescore_every_tokens: 2, hold_back_tokens: 0 }\n");
        let mut m = OutputChecks::new(p, true, false);
        for w in ["a ", "b ", "c ", "d ", "e ", "f "] {
            m.push(w);
        }
        m.prefix_scored(2, Some(&verdict(0.1)));
        m.prefix_scored(4, Some(&verdict(0.3)));
        m.prefix_scored(6, Some(&verdict(0.2)));
        // 0.3 is above the default release threshold (0.25): 4 did not clear; 6 did, but
        // the last piece still waits.
        assert_eq!(m.release(), "a b c d e ");
        m.complete();
        m.final_scored(Some(verdict(0.9)));
        assert!(m.blocked().is_some());
        assert_eq!(m.release(), "");
        assert_eq!(m.released(), 10);
    }

    #[test]
    fn code_waits_for_the_shield_and_a_blocking_finding_ends_the_reply() {
        let mut m = OutputChecks::new(policy(""), false, true);
        m.push("Run this:\nos.system(cmd)\n");
        m.shield_progress(10, vec![], Duration::from_millis(1));
        assert_eq!(m.release(), "Run this:\n");
        m.shield_progress(10, vec![finding()], Duration::from_millis(1));
        assert!(m.blocked().is_some());
        m.push("more");
        assert_eq!(m.release(), "");
        assert_eq!(m.text(), "Run this:\nos.system(cmd)\n");
    }

    #[test]
    fn the_shield_budget_counts_every_scan() {
        let p = policy("shield: { timeout_ms: 100 }\n");
        let mut m = OutputChecks::new(p, false, true);
        m.push("x\n");
        m.shield_progress(2, vec![], Duration::from_millis(70));
        assert_eq!(m.shield_time_left(), Duration::from_millis(30));
        m.shield_progress(2, vec![], Duration::from_millis(70));
        assert_eq!(m.shield_time_left(), Duration::ZERO);
    }

    #[test]
    fn failing_open_releases_what_the_other_checks_cleared() {
        let mut m = OutputChecks::new(policy(""), false, true);
        m.push("text");
        m.complete();
        assert_eq!(m.release(), "");
        m.shield_failed_open();
        assert_eq!(m.release(), "text");
        assert_eq!(m.decision().action, safegate_policies::Action::Allow);
    }

    /// One event of a scripted reply.
    #[derive(Debug, Clone)]
    enum Step {
        Text(String),
        /// The guard scores the reply so far at this P(unsafe).
        Prefix(f64),
        /// The shield judges text up to this fraction of what it has not judged yet.
        Shield(f64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => "[a-z ]{1,12}\n?".prop_map(Step::Text),
            1 => (0.0f64..1.0).prop_map(Step::Prefix),
            1 => (0.0f64..1.0).prop_map(Step::Shield),
        ]
    }

    /// A script, and what the checks say of the whole reply at the end: the final P(unsafe)
    /// and whether the shield finds blocking code.
    #[derive(Debug, Clone)]
    struct Script {
        steps: Vec<Step>,
        final_p: f64,
        finding: bool,
        hold: u32,
        every: u32,
    }

    fn script() -> impl Strategy<Value = Script> {
        (
            proptest::collection::vec(step(), 1..60),
            0.0f64..1.0,
            proptest::bool::weighted(0.2),
            0u32..6,
            1u32..6,
        )
            .prop_map(|(steps, final_p, finding, hold, every)| Script {
                steps,
                final_p,
                finding,
                hold,
                every,
            })
    }

    fn machine(s: &Script) -> OutputChecks {
        let p = policy(&format!(
            "streaming: {{ rescore_every_tokens: {}, hold_back_tokens: {} }}\n",
            s.every, s.hold
        ));
        OutputChecks::new(p, true, true)
    }

    fn final_findings(s: &Script) -> Vec<Finding> {
        if s.finding {
            vec![finding()]
        } else {
            vec![]
        }
    }

    /// Plays a script as a stream; returns the machine and, at each release, the bound the
    /// release rule allowed before the verdicts on the whole reply were known.
    fn stream(s: &Script) -> (OutputChecks, Vec<(usize, usize)>) {
        let mut m = machine(s);
        let mut guard_bound = 0usize;
        let mut shield_bound = 0usize;
        let mut checks = Vec::new();
        for st in &s.steps {
            match st {
                Step::Text(t) => m.push(t),
                Step::Prefix(p) => {
                    let n = m.pieces();
                    if *p < m.policy().release_threshold() {
                        let cut = n.saturating_sub(s.hold as usize);
                        if cut > 0 {
                            guard_bound = guard_bound.max(m.piece_ends[cut - 1]);
                        }
                    }
                    m.prefix_scored(n, Some(&verdict(*p)));
                }
                Step::Shield(f) => {
                    let len = m.text().len();
                    let upto = shield_bound + ((len - shield_bound) as f64 * f) as usize;
                    shield_bound = upto;
                    m.shield_progress(upto, vec![], Duration::ZERO);
                }
            }
            let before = m.released();
            m.release();
            checks.push((m.released(), before.max(guard_bound.min(shield_bound))));
        }
        m.complete();
        m.release();
        m.shield_finished(final_findings(s), Duration::ZERO);
        m.release();
        if m.final_score_due() {
            m.final_scored(Some(verdict(s.final_p)));
        }
        m.release();
        (m, checks)
    }

    fn whole(s: &Script) -> OutputChecks {
        let mut m = machine(s);
        for st in &s.steps {
            if let Step::Text(t) = st {
                m.push(t);
            }
        }
        m.complete();
        m.shield_finished(final_findings(s), Duration::ZERO);
        if m.final_score_due() {
            m.final_scored(Some(verdict(s.final_p)));
        }
        m.release();
        m
    }

    proptest! {
        /// (i) Before the reply is settled, no byte leaves unless the shield and a calm
        /// prefix score both covered it.
        #[test]
        fn nothing_leaves_uncleared(s in script()) {
            let (_, checks) = stream(&s);
            for (released, bound) in checks {
                prop_assert!(released <= bound, "released {released} past the cleared {bound}");
            }
        }

        /// (ii) A reply withheld whole is never visible in full on the stream.
        #[test]
        fn a_blocked_reply_is_never_sent_in_full(s in script()) {
            let (m, _) = stream(&s);
            if m.blocked().is_some() && !m.text().is_empty() {
                prop_assert!(m.released() < m.text().len());
            }
        }

        /// (iii) The same script gives the same decision whole and streamed, and a reply
        /// allowed is released in full either way.
        #[test]
        fn whole_and_streamed_agree(s in script()) {
            let (streamed, _) = stream(&s);
            let w = whole(&s);
            prop_assert_eq!(streamed.blocked().is_some(), w.blocked().is_some());
            prop_assert_eq!(streamed.decision().action, w.decision().action);
            if w.blocked().is_none() {
                prop_assert_eq!(streamed.released(), streamed.text().len());
                prop_assert_eq!(w.released(), w.text().len());
            } else {
                prop_assert_eq!(w.released(), 0);
            }
        }
    }
}
