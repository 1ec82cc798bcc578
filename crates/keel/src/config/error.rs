//! ConfigError: every problem one load found, each printed as
//! `FILE:LINE: KEY: what is wrong (what would be valid)`, in file order.

use std::fmt;

/// One thing wrong with a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the offending value or key; `None` when the file could not be read.
    pub line: Option<usize>,
    /// Dotted path of the key, e.g. `pool.shop.workers` or `site[0].bindings[1]`; empty when
    /// the problem is not about one key.
    pub key: String,
    /// What is wrong and, in parentheses or after a semicolon, what would be valid.
    pub message: String,
}

/// All the problems found while loading one configuration (never empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    file: String,
    problems: Vec<Problem>,
}

impl ConfigError {
    /// `file` is the name to print: the path as the user gave it, or `<embedded default>`.
    pub(crate) fn new(file: String, mut problems: Vec<Problem>) -> Self {
        debug_assert!(!problems.is_empty());
        // Stable: problems on one line keep the order they were found in.
        problems.sort_by_key(|p| p.line);
        ConfigError { file, problems }
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}:", self.file)?;
            if let Some(line) = problem.line {
                write!(f, "{line}:")?;
            }
            if !problem.key.is_empty() {
                write!(f, " {}:", problem.key)?;
            }
            write!(f, " {}", problem.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_per_problem_in_file_order() {
        let err = ConfigError::new(
            "keel.toml".into(),
            vec![
                Problem {
                    line: Some(12),
                    key: "pool.shop.workers".into(),
                    message: "must be at least 1 (got 0)".into(),
                },
                Problem {
                    line: Some(4),
                    key: "site[0].name".into(),
                    message: "is missing".into(),
                },
            ],
        );
        assert_eq!(
            err.to_string(),
            "keel.toml:4: site[0].name: is missing\n\
             keel.toml:12: pool.shop.workers: must be at least 1 (got 0)"
        );
    }

    #[test]
    fn a_problem_without_line_or_key_prints_the_file_only() {
        let err = ConfigError::new(
            "/etc/keel/keel.toml".into(),
            vec![Problem {
                line: None,
                key: String::new(),
                message: "cannot read the file: not found".into(),
            }],
        );
        assert_eq!(
            err.to_string(),
            "/etc/keel/keel.toml: cannot read the file: not found"
        );
    }
}
