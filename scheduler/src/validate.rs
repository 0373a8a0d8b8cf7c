//! Shape checks on the fields of a request, shared by every service: a request is validated
//! before anything is recorded (ARCHITECTURE.md, "No panic on bytes from a request").

use crate::SchedulerError;

/// Longest id, name or other short field, in bytes.
pub const FIELD_BYTES_MAX: usize = 256;
/// Longest free-text description, in characters (longer text is cut).
pub const DESCRIPTION_CHARS_MAX: usize = 1024;

/// A field of at most [`FIELD_BYTES_MAX`] bytes without control characters; `required`
/// also refuses an empty (or blank) value.
///
/// # Errors
/// [`SchedulerError::Invalid`] naming the field.
pub fn field(name: &str, v: &str, required: bool) -> Result<(), SchedulerError> {
    if required && v.trim().is_empty() {
        return Err(SchedulerError::Invalid(format!("{name} is required")));
    }
    if v.len() > FIELD_BYTES_MAX || v.chars().any(char::is_control) {
        return Err(SchedulerError::Invalid(format!(
            "{name} must be at most {FIELD_BYTES_MAX} bytes without control characters"
        )));
    }
    Ok(())
}

/// A required field.
///
/// # Errors
/// [`SchedulerError::Invalid`] naming the field.
pub fn required(name: &str, v: &str) -> Result<(), SchedulerError> {
    field(name, v, true)
}

/// A customer (or provider) id: required, without `:` (the account-name separator), so one
/// customer's accounts can never be named through another's id, and without leading or
/// trailing spaces (`" bob"` would be another account than `"bob"`).
///
/// # Errors
/// [`SchedulerError::Invalid`] naming the field.
pub fn customer(name: &str, v: &str) -> Result<(), SchedulerError> {
    required(name, v)?;
    if v.contains(':') {
        return Err(SchedulerError::Invalid(format!(
            "{name} must not contain ':' (the account-name separator)"
        )));
    }
    if v.trim() != v {
        return Err(SchedulerError::Invalid(format!(
            "{name} {v:?} has leading or trailing spaces (it would name another account)"
        )));
    }
    Ok(())
}

/// A plain file name (no directory part, not hidden); empty is allowed unless `required`.
///
/// Refused, each with its own reason: a path separator (`/`, `\\`), `.` and `..`, a leading
/// dot (hidden, and the shape of the workers' temporary files), leading or trailing
/// whitespace (`"x.csv "` is a different file from `"x.csv"`), control characters, more than
/// [`FIELD_BYTES_MAX`] bytes.
///
/// # Errors
/// [`SchedulerError::Invalid`] naming the field, the value and why.
pub fn file_name(name: &str, v: &str, required: bool) -> Result<(), SchedulerError> {
    field(name, v, required)?;
    if v.is_empty() {
        return Ok(());
    }
    let why = if v.contains('/') || v.contains('\\') {
        Some("must be a bare file name, without a directory or path separator")
    } else if v == "." || v == ".." {
        Some("must be a file name, not . or ..")
    } else if v.starts_with('.') {
        Some("must not start with '.' (hidden file)")
    } else if v.trim() != v {
        Some("must not start or end with whitespace")
    } else {
        None
    };
    match why {
        Some(why) => Err(SchedulerError::Invalid(format!("{name} {v:?} {why}"))),
        None => Ok(()),
    }
}

/// The file extensions a dataset may have, lower case (the formats
/// `tessera_core::table::read_keys` reads, and `tseal`: a CSV file sealed with the dataset's
/// key by `tessera dataset seal`, which only a `tee` job's enclave opens).
pub const DATASET_EXTENSIONS: &[&str] = &["csv", "parquet", "pq", "tseal"];

/// A dataset location: a plain [`file_name`] with a supported extension
/// ([`DATASET_EXTENSIONS`], any case), so a job never fails late on a file it cannot read.
///
/// # Errors
/// [`SchedulerError::Invalid`] naming the field and the reason.
pub fn dataset_location(name: &str, v: &str) -> Result<(), SchedulerError> {
    file_name(name, v, true)?;
    let ext = std::path::Path::new(v)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if !ext.is_some_and(|e| DATASET_EXTENSIONS.contains(&e.as_str())) {
        return Err(SchedulerError::Invalid(format!(
            "{name} {v:?} has no supported extension (expected .csv, .parquet, .pq, or .tseal for \
             a sealed CSV file)"
        )));
    }
    Ok(())
}

/// Whether a dataset location names a sealed file (`.tseal`, any case).
pub fn is_sealed(location: &str) -> bool {
    std::path::Path::new(location)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("tseal"))
}

/// Refuses, when a licence is made, a policy whose scenes could never run on the dataset at
/// `location`: a `tee` scene must name the enclave it accepts (at least one `tee:` entry in
/// `envHard`, each of which parses: `tessera_tee::HardwareRequirement::from_env_hard`) and
/// needs a sealed dataset (`.tseal`, which only the enclave opens); every other scene needs a
/// dataset its engine reads in clear (a `.tseal` file opens only inside a tee job).
///
/// # Errors
/// [`SchedulerError::Invalid`] naming the scene and what to change.
pub fn scenes_fit_dataset(
    policy: &tessera_policy::UsagePolicy,
    dataset_id: &str,
    location: &str,
) -> Result<(), SchedulerError> {
    let sealed = is_sealed(location);
    for s in &policy.use_scenes {
        let tee = s.use_sence == tessera_core::job::scene::TEE;
        if tee {
            let named = s.env_hard.0.iter().any(|e| e.starts_with("tee:"));
            if !named {
                return Err(SchedulerError::Invalid(format!(
                    "scene tee: envHard names no enclave it accepts (e.g. \"tee:sgx\", \
                     \"tee:sgx:mrenclave=HEX\", \"tee:tdx\", \"tee:sev-snp\", or \
                     \"tee:insecure-simulated-tee\" for development); envHard is {:?}",
                    s.env_hard.0
                )));
            }
            tessera_tee::HardwareRequirement::from_env_hard(&s.env_hard.0)
                .map_err(|e| SchedulerError::Invalid(format!("scene tee: {e}")))?;
        }
        if tee && !sealed {
            return Err(SchedulerError::Invalid(format!(
                "scene tee: dataset {dataset_id} is not sealed ({location:?}); a tee job's \
                 enclave reads only a sealed file: seal it with `tessera dataset seal` into a \
                 dataset whose location ends in .tseal"
            )));
        }
        if !tee && sealed {
            return Err(SchedulerError::Invalid(format!(
                "scene {}: dataset {dataset_id} is sealed ({location:?}) and opens only inside a \
                 tee job's enclave; license it for the tee scene, or license a clear dataset \
                 for {}",
                s.use_sence, s.use_sence
            )));
        }
    }
    Ok(())
}

/// A strictly positive amount of micro-units.
///
/// # Errors
/// [`SchedulerError::Invalid`] naming the field.
pub fn positive(name: &str, v: i64) -> Result<(), SchedulerError> {
    if v <= 0 {
        return Err(SchedulerError::Invalid(format!("{name} must be positive")));
    }
    Ok(())
}

/// A non-negative amount of micro-units.
///
/// # Errors
/// [`SchedulerError::Invalid`] naming the field.
pub fn non_negative(name: &str, v: i64) -> Result<(), SchedulerError> {
    if v < 0 {
        return Err(SchedulerError::Invalid(format!(
            "{name} must not be negative"
        )));
    }
    Ok(())
}

/// An amount of micro-units from `0` to [`tessera_accounting::money::MAX_AMOUNT_MICROS`]
/// (10^15, 10^9 yuan) inclusive: a price, a credit line.
///
/// # Errors
/// [`SchedulerError::Invalid`] naming the field and the limit.
pub fn amount(name: &str, v: i64) -> Result<(), SchedulerError> {
    non_negative(name, v)?;
    tessera_accounting::ledger::check_amount(v)
        .map_err(|e| SchedulerError::Invalid(format!("{name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_checked_for_presence_length_separators_and_paths() {
        assert!(required("user", "u").is_ok());
        assert!(required("user", " ").is_err());
        assert!(field("note", "", false).is_ok());
        assert!(field("note", &"x".repeat(FIELD_BYTES_MAX + 1), false).is_err());
        assert!(field("note", "a\nb", false).is_err());
        assert!(customer("customer", "acme").is_ok());
        assert!(customer("customer", "acme:cash").is_err());
        assert!(file_name("output", "", false).is_ok());
        assert!(file_name("output", "", true).is_err());
        for bad in [
            "../x.csv",
            "a/b.csv",
            ".hidden",
            "a\\b",
            ".",
            "..",
            "x.csv ",
            " x.csv",
            "x\tcsv",
            "x\u{7}.csv",
            "dir/",
        ] {
            assert!(file_name("output", bad, false).is_err(), "{bad:?}");
        }
        for good in ["x.csv", "result 2026-11.csv", "a..b.csv", "é.csv"] {
            assert!(file_name("output", good, false).is_ok(), "{good:?}");
        }
        let e = file_name("output", "x.csv ", false).expect_err("trailing space");
        assert!(e.to_string().contains("whitespace"), "{e}");
        assert!(e.to_string().contains("\"x.csv \""), "{e}");
        for good in ["a.csv", "A.CSV", "b.parquet", "c.pq"] {
            assert!(dataset_location("location", good).is_ok(), "{good}");
        }
        for bad in ["customers", "a.txt", "a.csv.gz", "csv", ".csv", "a/b.csv"] {
            assert!(dataset_location("location", bad).is_err(), "{bad}");
        }
        let e = dataset_location("location", "customers").expect_err("no extension");
        assert!(
            e.to_string().contains(".csv, .parquet, .pq, or .tseal"),
            "{e}"
        );
        assert!(positive("amount_micros", 0).is_err());
        assert!(non_negative("limit_micros", 0).is_ok());
        assert!(non_negative("limit_micros", -1).is_err());
        assert!(amount("price", 1_000_000_000_000_000).is_ok());
        let err = amount("price", i64::MAX)
            .expect_err("too large")
            .to_string();
        assert!(
            err.contains("price") && err.contains("1000000000000000"),
            "{err}"
        );
        assert!(amount("price", -1).is_err());
    }
}
