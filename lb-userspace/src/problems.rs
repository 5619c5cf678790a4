//! Reporting objects that could not be translated: once per distinct
//! problem (not on every sync), as a warning log with the object's
//! namespace/name, a counter, and optionally a Kubernetes Event.

use std::collections::BTreeSet;

use crate::model::Problem;

/// Remembers which problems were already reported.
#[derive(Debug, Default)]
pub struct ProblemLog {
    reported: BTreeSet<Problem>,
    /// Distinct problems seen since start (a metric).
    pub total: u64,
}

impl ProblemLog {
    /// Returns the problems not reported before; forgets the ones that
    /// went away (so a problem that comes back is reported again).
    pub fn fresh(&mut self, current: &[Problem]) -> Vec<Problem> {
        let now: BTreeSet<Problem> = current.iter().cloned().collect();
        let fresh: Vec<Problem> = now.difference(&self.reported).cloned().collect();
        self.total += fresh.len() as u64;
        self.reported = now;
        fresh
    }

    /// Problems present right now.
    pub fn current(&self) -> usize {
        self.reported.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(name: &str) -> Problem {
        Problem { kind: "Service", namespace: "ns".into(), name: name.into(), message: "bad port".into() }
    }

    #[test]
    fn a_problem_is_reported_once_while_it_lasts() {
        let mut log = ProblemLog::default();
        assert_eq!(log.fresh(&[problem("a")]).len(), 1);
        assert!(log.fresh(&[problem("a")]).is_empty());
        assert_eq!(log.fresh(&[problem("a"), problem("b")]), [problem("b")]);
        assert_eq!(log.total, 2);
    }

    #[test]
    fn a_problem_that_returns_is_reported_again() {
        let mut log = ProblemLog::default();
        log.fresh(&[problem("a")]);
        log.fresh(&[]);
        assert_eq!(log.current(), 0);
        assert_eq!(log.fresh(&[problem("a")]).len(), 1);
    }
}
