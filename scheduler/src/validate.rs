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

/// A customer (or provider) id: required, and without `:` (the account-name separator), so
/// one customer's accounts can never be named through another's id.
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
    Ok(())
}

/// A plain file name (no directory part, not hidden); empty is allowed unless `required`.
///
/// # Errors
/// [`SchedulerError::Invalid`] naming the field.
pub fn file_name(name: &str, v: &str, required: bool) -> Result<(), SchedulerError> {
    field(name, v, required)?;
    if v.contains('/') || v.contains('\\') || v == ".." || v.starts_with('.') {
        return Err(SchedulerError::Invalid(format!(
            "{name} must be a plain file name"
        )));
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
        for bad in ["../x.csv", "a/b.csv", ".hidden", "a\\b"] {
            assert!(file_name("output", bad, false).is_err(), "{bad}");
        }
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
