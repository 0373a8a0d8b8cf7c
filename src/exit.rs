//! How `tessera` ends: the exit statuses (documented in README and `tessera --help`) and the
//! one place errors are printed.
//!
//! | status | meaning |
//! |---|---|
//! | 0 | success (a followed job succeeded) |
//! | 1 | error: a request refused by the operator (printed as `error: CODE: message`), bad input, I/O |
//! | 2 | usage error (unknown option, missing argument), printed by clap |
//! | 3 | the job was refused at admission; `tee verify`: the evidence was refused |
//! | 4 | the job failed |
//! | 5 | the job was cancelled |
//! | 6 | connection lost (any command): the operator could not be reached, or stopped answering before a followed job ended |
//! | 130, 143 | a benchmark stopped by SIGINT (Ctrl-C) or SIGTERM before it ended (128 + the signal's number, as a shell reports a process the signal killed) |
//!
//! A reader that goes away (`tessera job list | head`) is a normal end: status 0, nothing
//! printed.

use std::process::ExitCode;

use crate::client::output::is_broken_pipe;

/// Shown at the end of `tessera --help`.
pub const EXIT_HELP: &str = "Exit status: 0 success; 1 error (the operator's API code and \
message are printed as `error: CODE: message`); 2 usage error; 6 connection lost (the \
operator could not be reached, or stopped answering before a followed job ended); for `job \
submit` and `job watch`, 3 the job was refused, 4 it failed, 5 it was cancelled; for `tee \
verify`, 3 the evidence was refused; for `bench`, 130 or 143 stopped by SIGINT or SIGTERM.";

/// Success.
pub const OK: u8 = 0;
/// Any other error.
pub const ERROR: u8 = 1;
/// The job was refused at admission.
pub const REFUSED: u8 = 3;
/// The job failed.
pub const FAILED: u8 = 4;
/// The job was cancelled.
pub const CANCELLED: u8 = 5;
/// The operator could not be reached or stopped answering.
pub const CONNECTION_LOST: u8 = 6;

/// A command stopped part-way by a signal; its exit status is 128 + the signal's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    /// SIGINT (Ctrl-C): status 130.
    Interrupt,
    /// SIGTERM: status 143.
    Terminate,
}

impl Interrupted {
    /// 128 + the signal's number.
    pub fn status(self) -> u8 {
        match self {
            Self::Interrupt => 130,
            Self::Terminate => 143,
        }
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Interrupt => "interrupted (SIGINT)",
            Self::Terminate => "terminated (SIGTERM)",
        })
    }
}

impl std::error::Error for Interrupted {}

/// A followed job ended in an unhappy state; the job's line has been printed already.
#[derive(Debug)]
pub struct JobEnded {
    /// The job.
    pub job_id: String,
    /// Its final state (`refused`, `failed` or `cancelled`).
    pub state: tessera_proto::v1::JobState,
}

impl std::fmt::Display for JobEnded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = tessera_core::JobState::try_from(self.state)
            .map(|s| s.as_str())
            .unwrap_or("unknown");
        write!(f, "job {} {state}", self.job_id)
    }
}

impl std::error::Error for JobEnded {}

/// `tee verify` refused the evidence; the verdict and its reasons have been printed.
#[derive(Debug)]
pub struct AppraisalRefused;

impl std::fmt::Display for AppraisalRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("evidence refused")
    }
}

impl std::error::Error for AppraisalRefused {}

/// The operator stopped answering (or never answered) while a job was followed.
#[derive(Debug)]
pub struct ConnectionLost {
    /// What was being done.
    pub what: String,
}

impl std::fmt::Display for ConnectionLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connection lost: {}", self.what)
    }
}

impl std::error::Error for ConnectionLost {}

/// Whether a gRPC status is a transport failure (the operator unreachable, the connection
/// broken) rather than an answer from the operator.
pub fn is_transport(s: &tonic::Status) -> bool {
    std::error::Error::source(s).is_some()
}

/// The exit status for an error (see the module table).
pub fn code_of(e: &anyhow::Error) -> u8 {
    use tessera_proto::v1::JobState;
    for c in e.chain() {
        if let Some(i) = c.downcast_ref::<Interrupted>() {
            return i.status();
        }
        if c.is::<AppraisalRefused>() {
            return REFUSED;
        }
        if let Some(j) = c.downcast_ref::<JobEnded>() {
            return match j.state {
                JobState::Refused => REFUSED,
                JobState::Cancelled => CANCELLED,
                _ => FAILED,
            };
        }
        if let Some(e) = c.downcast_ref::<tessera_proto::ConnectError>() {
            // Waiting will not make an untrusted certificate trusted: an error, not a loss.
            return if e.retryable() {
                CONNECTION_LOST
            } else {
                ERROR
            };
        }
        if c.is::<ConnectionLost>() || c.is::<tonic::transport::Error>() {
            return CONNECTION_LOST;
        }
        if let Some(s) = c.downcast_ref::<tonic::Status>() {
            return if is_transport(s) {
                CONNECTION_LOST
            } else {
                ERROR
            };
        }
    }
    ERROR
}

/// The API code name of a gRPC status code (`INVALID_ARGUMENT`, `NOT_FOUND`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The error as one line: each cause in turn, a gRPC status as `CODE: message` (never its
/// debug form with metadata), a transport failure as its cause.
pub fn render(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in e.chain() {
        let text = if let Some(s) = c.downcast_ref::<tonic::Status>() {
            if is_transport(s) {
                let mut t = String::from("the operator is unreachable");
                let mut src = std::error::Error::source(s);
                while let Some(x) = src {
                    let more = x.to_string();
                    if !t.contains(&more) {
                        t = format!("{t}: {more}");
                    }
                    src = x.source();
                }
                // A plain HTTP/2 client talking to a TLS port reads the TLS record as a frame.
                if t.contains("frame with invalid size") {
                    t.push_str(
                        " (is the operator serving TLS? use https:// with its CA file, --ca-file)",
                    );
                }
                t
            } else {
                format!("{}: {}", code_name(s.code()), s.message())
            }
        } else {
            c.to_string()
        };
        // anyhow repeats a wrapped error's text in its cause, and a library's error often
        // repeats its cause's message behind a code ("Error code 26: file is not a
        // database"); print it once.
        let tail = text.rsplit(": ").next().unwrap_or(&text);
        if parts
            .last()
            .is_none_or(|p| !p.ends_with(&text) && !p.ends_with(tail))
        {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// Prints the error on stderr (unless the reader of stdout went away) and returns the exit
/// status.
pub fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::from(OK),
        Err(e) if is_broken_pipe(&e) => ExitCode::from(OK),
        Err(e) => {
            let code = code_of(&e);
            // A followed job's end has been printed on stdout with its line; say it once more
            // on stderr for logs, shortly.
            eprintln!("error: {}", render(&e));
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::v1::JobState;

    #[test]
    fn a_status_prints_its_code_and_message_only() {
        let e = anyhow::Error::new(tonic::Status::invalid_argument("output \"x \" is bad"))
            .context("submitting the job");
        let text = render(&e);
        assert_eq!(
            text,
            "submitting the job: INVALID_ARGUMENT: output \"x \" is bad"
        );
        assert!(!text.contains("metadata"));
        assert_eq!(code_of(&e), ERROR);
    }

    #[test]
    fn a_cause_repeating_the_last_words_behind_a_code_is_printed_once() {
        // As rusqlite's error over SQLite's: "file is not a database" over
        // "Error code 26: file is not a database".
        #[derive(Debug)]
        struct Coded;
        impl std::fmt::Display for Coded {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("Error code 26: file is not a database")
            }
        }
        impl std::error::Error for Coded {}
        let e = anyhow::Error::new(Coded)
            .context("file is not a database")
            .context("opening the store d/tessera.db");
        assert_eq!(
            render(&e),
            "opening the store d/tessera.db: file is not a database"
        );
    }

    #[test]
    fn each_unhappy_end_has_its_own_status() {
        let ended = |state| {
            code_of(&anyhow::Error::new(JobEnded {
                job_id: "j".into(),
                state,
            }))
        };
        let codes = [
            ended(JobState::Refused),
            ended(JobState::Failed),
            ended(JobState::Cancelled),
            code_of(&anyhow::Error::new(ConnectionLost { what: "x".into() })),
            code_of(&anyhow::anyhow!("other")),
        ];
        assert_eq!(codes, [REFUSED, FAILED, CANCELLED, CONNECTION_LOST, ERROR]);
        let mut distinct = codes.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), codes.len());
        assert!(!codes.contains(&OK) && !codes.contains(&2));
    }
}
