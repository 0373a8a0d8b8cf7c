//! The `insecure-simulated-tee` development mode: evidence is a JSON claim set that nobody
//! signs, so anyone can write any claim. Appraisals of it say `insecure-simulated-tee`, and a
//! policy accepts it only if it has an `insecure_simulated_tee` section (none should in
//! production); the key broker refuses it whenever the licence asks for real hardware.
//!
//! ```json
//! {"insecure_simulated_tee": true, "measurement": "dev-build-1", "report_data": "<128 hex>"}
//! ```

use serde::Deserialize;

use crate::error::VerifyError;
use crate::evidence::{Measurements, VerifiedEvidence};

/// Largest simulated claim set read, in bytes.
pub const MAX_SIMULATED_BYTES: usize = 16 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Claims {
    insecure_simulated_tee: bool,
    measurement: String,
    #[serde(default)]
    report_data: Option<String>,
    #[serde(default)]
    debug: bool,
}

/// Reads a simulated claim set. NO SECURITY: nothing is verified, there is nothing to verify.
///
/// # Errors
/// [`VerifyError::Malformed`] for anything but the shape above (the
/// `"insecure_simulated_tee": true` marker is required).
pub fn insecure_simulated_evidence(json: &[u8], at: u64) -> Result<VerifiedEvidence, VerifyError> {
    const WHAT: &str = "insecure-simulated-tee evidence";
    VerifyError::check_len(WHAT, json.len(), MAX_SIMULATED_BYTES)?;
    let c: Claims = serde_json::from_slice(json).map_err(|e| VerifyError::malformed(WHAT, e))?;
    if !c.insecure_simulated_tee {
        return Err(VerifyError::malformed(
            WHAT,
            "\"insecure_simulated_tee\" must be true",
        ));
    }
    let mut report_data = [0u8; 64];
    if let Some(h) = c.report_data {
        let v = hex::decode(h.trim()).map_err(|e| VerifyError::malformed(WHAT, e))?;
        report_data = v
            .try_into()
            .map_err(|_| VerifyError::malformed(WHAT, "report_data must be 64 bytes"))?;
    }
    Ok(VerifiedEvidence::new(
        Measurements::InsecureSimulated {
            measurement: c.measurement,
        },
        report_data,
        c.debug,
        at,
    ))
}
