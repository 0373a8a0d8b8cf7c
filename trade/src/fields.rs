//! The request bodies of T/AI 123.12 appendix A.1–A.3, with the standard's exact field
//! names, and their validation into typed records.
//!
//! Every body is parsed with unknown fields refused by name; [`validate`](RegisterData::validate)
//! turns the optional fields of the wire shape into a record whose required fields are present
//! and bounded, naming the first field that is not ([`TradeError::MissingField`],
//! [`TradeError::InvalidField`]). Prices are JSON numbers in currency units (`float` in the
//! standard) and become integer micro-units here, exactly (at most six decimals).
//!
//! Tessera's extensions, each optional: `public_key` on `/registerDemand` (the buyer's X25519
//! key the settlement seals the delivery key to — settlement refuses a demand without one),
//! `licensesID` and `license_term` on `/updateLicenses`, `usage_restrictions` and
//! `license_term` on `/confirmDemand` (the terms the licence will carry; defaults documented on
//! [`ConfirmDemand`]).

use serde::{Deserialize, Serialize};
use tessera_accounting::money::{MAX_AMOUNT_MICROS, Micros};
use tessera_core::civil::parse_millis;

use crate::error::TradeError;
use crate::seal::BuyerPublicKey;

/// Longest short text field (names, ids, types, formats, countries), in characters.
pub const MAX_SHORT: usize = 256;
/// Longest description, URL or restriction text, in characters.
pub const MAX_LONG: usize = 4096;
/// Most items in a list field (`key_words`, `data_category`).
pub const MAX_ITEMS: usize = 64;

pub(crate) fn text(
    v: Option<String>,
    field: &'static str,
    max: usize,
) -> Result<String, TradeError> {
    let v = v.ok_or(TradeError::MissingField(field))?;
    let t = v.trim();
    if t.is_empty() {
        return Err(TradeError::MissingField(field));
    }
    check_text(t, field, max)?;
    Ok(t.to_string())
}

pub(crate) fn opt_text(
    v: Option<String>,
    field: &'static str,
    max: usize,
) -> Result<Option<String>, TradeError> {
    match v {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => text(Some(s), field, max).map(Some),
    }
}

fn check_text(t: &str, field: &'static str, max: usize) -> Result<(), TradeError> {
    if t.chars().count() > max {
        return Err(TradeError::invalid(
            field,
            format!("longer than {max} characters"),
        ));
    }
    if t.chars().any(char::is_control) {
        return Err(TradeError::invalid(field, "contains control characters"));
    }
    Ok(())
}

fn list(v: Option<Vec<String>>, field: &'static str) -> Result<Vec<String>, TradeError> {
    let v = v.ok_or(TradeError::MissingField(field))?;
    if v.len() > MAX_ITEMS {
        return Err(TradeError::invalid(
            field,
            format!("more than {MAX_ITEMS} items"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(v.len());
    for item in v {
        let t = item.trim();
        if t.is_empty() {
            return Err(TradeError::invalid(field, "an item is empty"));
        }
        check_text(t, field, MAX_SHORT)?;
        if !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    }
    if out.is_empty() {
        return Err(TradeError::MissingField(field));
    }
    Ok(out)
}

/// A civil date-time `yyyy-mm-dd HH:MM:SS` (the standard's form, read in the operator's zone).
fn civil(v: Option<String>, field: &'static str) -> Result<String, TradeError> {
    let t = text(v, field, MAX_SHORT)?;
    parse_millis(&t).map_err(|_| TradeError::invalid(field, "not yyyy-mm-dd HH:MM:SS"))?;
    Ok(t)
}

/// A price: a non-negative JSON number of currency units with at most six decimals.
///
/// JSON numbers arrive as integers or IEEE doubles; a double is accepted only when it is
/// exactly the double nearest to a decimal with at most six decimals (so `12.34` is
/// 12,340,000 micro-units, and `0.0000001` is refused rather than rounded).
fn price(v: &serde_json::Number, field: &'static str) -> Result<Micros, TradeError> {
    let too_big = || TradeError::invalid(field, "larger than the largest amount");
    let micros = if let Some(u) = v.as_u64() {
        i64::try_from(u)
            .ok()
            .and_then(|u| u.checked_mul(1_000_000))
            .ok_or_else(too_big)?
    } else if let Some(i) = v.as_i64() {
        i.checked_mul(1_000_000).ok_or_else(too_big)?
    } else {
        let f = v
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| TradeError::invalid(field, "not a number"))?;
        if f.abs() > 1e15 {
            return Err(too_big());
        }
        let scaled = (f * 1e6).round();
        // In range: |scaled| <= 1e21 is refused above 1e15 units, so this cast is exact.
        #[allow(clippy::cast_possible_truncation)]
        let m = scaled as i64;
        #[allow(clippy::cast_precision_loss)]
        if (m as f64) / 1e6 != f {
            return Err(TradeError::invalid(field, "more than six decimals"));
        }
        m
    };
    if micros < 0 {
        return Err(TradeError::invalid(field, "negative"));
    }
    if micros > MAX_AMOUNT_MICROS {
        return Err(too_big());
    }
    Ok(micros)
}

/// `free` and `price` together: free data has no price (or 0); paid data has a price > 0.
fn free_and_price(
    free: Option<bool>,
    price_field: Option<serde_json::Number>,
) -> Result<(bool, Micros), TradeError> {
    let free = free.ok_or(TradeError::MissingField("free"))?;
    let micros = match &price_field {
        None => 0,
        Some(n) => price(n, "price")?,
    };
    match (free, micros) {
        (true, 0) => Ok((true, 0)),
        (true, _) => Err(TradeError::invalid("price", "free data has no price")),
        (false, 0) if price_field.is_none() => Err(TradeError::MissingField("price")),
        (false, 0) => Err(TradeError::invalid("price", "must be above 0 unless free")),
        (false, m) => Ok((false, m)),
    }
}

/// Micro-units as the standard's `price` (a JSON number of currency units).
pub fn price_number(micros: Micros) -> serde_json::Number {
    let text = tessera_accounting::money::format_amount(micros);
    text.parse::<serde_json::Number>()
        .unwrap_or_else(|_| serde_json::Number::from(micros / 1_000_000))
}

/// Parses a JSON body into a request shape, unknown fields refused by name.
///
/// # Errors
/// [`TradeError::Malformed`] naming the body.
pub fn parse_body<T: serde::de::DeserializeOwned>(
    what: &'static str,
    body: &[u8],
) -> Result<T, TradeError> {
    serde_json::from_slice(body).map_err(|e| TradeError::Malformed {
        what,
        reason: e.to_string(),
    })
}

/// Refuses a JSON document in which an object names a key twice, at any depth (RFC 8259
/// §4 leaves such documents' meaning to the reader; `serde_json` keeps the last value, so a
/// body such as `{"policyId": "a", "policyId": "b"}` would act on what a reviewer of the
/// request may not have seen). A document that is not JSON passes: the body's own parse
/// reports it.
///
/// # Errors
/// `Malformed` naming the repeated key.
pub fn reject_duplicate_keys(what: &'static str, body: &[u8]) -> Result<(), TradeError> {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
    struct Check;
    impl<'de> Deserialize<'de> for Check {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(CheckVisitor)
        }
    }
    struct CheckVisitor;
    impl<'de> Visitor<'de> for CheckVisitor {
        type Value = Check;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Check, E> {
            Ok(Check)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Check, E> {
            Ok(Check)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Check, E> {
            Ok(Check)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Check, E> {
            Ok(Check)
        }
        fn visit_str<E>(self, _: &str) -> Result<Check, E> {
            Ok(Check)
        }
        fn visit_unit<E>(self) -> Result<Check, E> {
            Ok(Check)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Check, A::Error> {
            while seq.next_element::<Check>()?.is_some() {}
            Ok(Check)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Check, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key.clone()) {
                    return Err(serde::de::Error::custom(format!(
                        "field `{key}` is given twice"
                    )));
                }
                map.next_value::<Check>()?;
            }
            Ok(Check)
        }
    }
    match serde_json::from_slice::<Check>(body) {
        Err(e) if e.is_data() => Err(TradeError::Malformed {
            what,
            reason: e.to_string(),
        }),
        _ => Ok(()),
    }
}

/// `/registerData` (table A.2).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterData {
    /// Provider name: the party that owns the dataset.
    pub owner: Option<String>,
    /// Key words.
    pub key_words: Option<Vec<String>>,
    /// The dataset's id (a dataset registered on this node).
    #[serde(rename = "dataID")]
    pub data_id: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Kind: data set, model, application, …
    pub data_type: Option<String>,
    /// File format.
    pub data_format: Option<String>,
    /// Size (unit chosen by the provider).
    pub data_size: Option<f64>,
    /// Categories (by industry).
    pub data_category: Option<Vec<String>>,
    /// Collection or creation time, `yyyy-mm-dd HH:MM:SS`.
    pub collection_time: Option<String>,
    /// Country.
    pub country: Option<String>,
    /// Provider's site (optional).
    pub provider_url: Option<String>,
    /// Where the resource is obtained.
    pub resource_url: Option<String>,
    /// URL confirming ownership.
    pub ownership_confirm: Option<String>,
    /// The provider's public key for encrypted distribution (recorded and returned).
    pub public_key: Option<String>,
    /// Whether the resource may be subscribed to (optional).
    pub subscribe_confirm: Option<String>,
}

/// A validated `/registerData` record (stored; served with the standard's names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataRegistration {
    /// Provider party.
    pub owner: String,
    /// Key words (deduplicated, trimmed).
    pub key_words: Vec<String>,
    /// Dataset id.
    #[serde(rename = "dataID")]
    pub data_id: String,
    /// Description.
    pub description: String,
    /// Kind.
    pub data_type: String,
    /// Format.
    pub data_format: String,
    /// Size.
    pub data_size: f64,
    /// Categories.
    pub data_category: Vec<String>,
    /// Collection time, `yyyy-mm-dd HH:MM:SS`.
    pub collection_time: String,
    /// Country.
    pub country: String,
    /// Provider's site.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub provider_url: Option<String>,
    /// Resource URL.
    pub resource_url: String,
    /// Ownership confirmation URL.
    pub ownership_confirm: String,
    /// Provider's public key (as given).
    pub public_key: String,
    /// Subscribable flag (as given).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub subscribe_confirm: Option<String>,
}

impl RegisterData {
    /// Checks every field of table A.2.
    ///
    /// # Errors
    /// The first missing or invalid field.
    pub fn validate(self) -> Result<DataRegistration, TradeError> {
        let data_size = self
            .data_size
            .ok_or(TradeError::MissingField("data_size"))?;
        if !data_size.is_finite() || data_size < 0.0 {
            return Err(TradeError::invalid(
                "data_size",
                "must be a non-negative number",
            ));
        }
        Ok(DataRegistration {
            owner: text(self.owner, "owner", MAX_SHORT)?,
            key_words: list(self.key_words, "key_words")?,
            data_id: text(self.data_id, "dataID", MAX_SHORT)?,
            description: text(self.description, "description", MAX_LONG)?,
            data_type: text(self.data_type, "data_type", MAX_SHORT)?,
            data_format: text(self.data_format, "data_format", MAX_SHORT)?,
            data_size,
            data_category: list(self.data_category, "data_category")?,
            collection_time: civil(self.collection_time, "collection_time")?,
            country: text(self.country, "country", MAX_SHORT)?,
            provider_url: opt_text(self.provider_url, "provider_url", MAX_LONG)?,
            resource_url: text(self.resource_url, "resource_url", MAX_LONG)?,
            ownership_confirm: text(self.ownership_confirm, "ownership_confirm", MAX_LONG)?,
            public_key: text(self.public_key, "public_key", MAX_LONG)?,
            subscribe_confirm: opt_text(self.subscribe_confirm, "subscribe_confirm", MAX_SHORT)?,
        })
    }
}

/// `/publishData` (table A.5).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishData {
    /// Provider party.
    pub owner: Option<String>,
    /// Registration number.
    #[serde(rename = "registrationID")]
    pub registration_id: Option<String>,
    /// Free of charge.
    pub free: Option<bool>,
    /// Price in currency units (absent when free).
    pub price: Option<serde_json::Number>,
}

/// A validated publication's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// Free of charge.
    pub free: bool,
    /// Price, integer micro-units (0 when free).
    pub price_micros: Micros,
}

/// A validated `/publishData`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPublication {
    /// Provider party.
    pub owner: String,
    /// Registration number.
    pub registration_id: String,
    /// Free / price.
    pub terms: Terms,
}

impl PublishData {
    /// Checks table A.5.
    ///
    /// # Errors
    /// The first missing or invalid field.
    pub fn validate(self) -> Result<DataPublication, TradeError> {
        let owner = text(self.owner, "owner", MAX_SHORT)?;
        let registration_id = text(self.registration_id, "registrationID", MAX_SHORT)?;
        let (free, price_micros) = free_and_price(self.free, self.price)?;
        Ok(DataPublication {
            owner,
            registration_id,
            terms: Terms { free, price_micros },
        })
    }
}

/// `/publishDatasets` (table A.8): a controlled dataset of the trusted data space.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishDatasets {
    /// Must be [`crate::CONTROLLED_OWNER`] (the standard's fixed value for this interface).
    pub owner: Option<String>,
    /// The controlled dataset's id.
    #[serde(rename = "dataID")]
    pub data_id: Option<String>,
    /// Must be [`crate::CONTROLLED_REGISTRATION_ID`].
    #[serde(rename = "registrationID")]
    pub registration_id: Option<String>,
    /// Description (optional).
    pub description: Option<String>,
    /// The usage protocol (agreement) name.
    pub protocol: Option<String>,
    /// Public flag (optional; 0 or 1).
    #[serde(rename = "isOpen")]
    pub is_open: Option<i64>,
    /// Source (optional).
    pub source: Option<String>,
    /// Key words.
    pub key_words: Option<Vec<String>>,
    /// Free of charge.
    pub free: Option<bool>,
    /// Price in currency units.
    pub price: Option<serde_json::Number>,
}

/// A validated controlled publication (stored; served with the standard's names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlledDataset {
    /// Dataset id.
    #[serde(rename = "dataID")]
    pub data_id: String,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub description: Option<String>,
    /// Usage protocol name.
    pub protocol: String,
    /// Public flag.
    #[serde(rename = "isOpen", skip_serializing_if = "Option::is_none", default)]
    pub is_open: Option<i64>,
    /// Source.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<String>,
    /// Key words.
    pub key_words: Vec<String>,
}

impl PublishDatasets {
    /// Checks table A.8 (the fixed owner and registration number included).
    ///
    /// # Errors
    /// The first missing or invalid field.
    pub fn validate(self) -> Result<(ControlledDataset, Terms), TradeError> {
        let owner = text(self.owner, "owner", MAX_SHORT)?;
        if owner != crate::CONTROLLED_OWNER {
            return Err(TradeError::invalid(
                "owner",
                format!(
                    "controlled data is published under the fixed owner {:?}",
                    crate::CONTROLLED_OWNER
                ),
            ));
        }
        let registration_id = text(self.registration_id, "registrationID", MAX_SHORT)?;
        if registration_id != crate::CONTROLLED_REGISTRATION_ID {
            return Err(TradeError::invalid(
                "registrationID",
                format!(
                    "controlled data carries the fixed registration number {:?}",
                    crate::CONTROLLED_REGISTRATION_ID
                ),
            ));
        }
        if let Some(v) = self.is_open
            && !(0..=1).contains(&v)
        {
            return Err(TradeError::invalid("isOpen", "0 or 1"));
        }
        let dataset = ControlledDataset {
            data_id: text(self.data_id, "dataID", MAX_SHORT)?,
            description: opt_text(self.description, "description", MAX_LONG)?,
            protocol: text(self.protocol, "protocol", MAX_SHORT)?,
            is_open: self.is_open,
            source: opt_text(self.source, "source", MAX_LONG)?,
            key_words: list(self.key_words, "key_words")?,
        };
        let (free, price_micros) = free_and_price(self.free, self.price)?;
        Ok((dataset, Terms { free, price_micros }))
    }
}

/// `/queryPublishedData` and `/revokePublishedData` (tables A.11, A.14).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedDataRef {
    /// Registration number.
    #[serde(rename = "registrationID")]
    pub registration_id: Option<String>,
    /// Dataset id: required for controlled data.
    #[serde(rename = "dataID")]
    pub data_id: Option<String>,
}

/// A validated reference to published data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRef {
    /// Registration number.
    pub registration_id: String,
    /// Dataset id (always set for controlled data).
    pub data_id: Option<String>,
}

impl PublishedDataRef {
    /// Checks the reference: `dataID` is required under the controlled registration number.
    ///
    /// # Errors
    /// The first missing or invalid field.
    pub fn validate(self) -> Result<DataRef, TradeError> {
        let registration_id = text(self.registration_id, "registrationID", MAX_SHORT)?;
        let data_id = opt_text(self.data_id, "dataID", MAX_SHORT)?;
        if registration_id == crate::CONTROLLED_REGISTRATION_ID && data_id.is_none() {
            return Err(TradeError::MissingField("dataID"));
        }
        Ok(DataRef {
            registration_id,
            data_id,
        })
    }
}

/// `/registerDemand` (table A.17, plus Tessera's `public_key`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterDemand {
    /// The buyer (a user id; the caller itself).
    pub demander: Option<String>,
    /// Categories sought.
    pub data_category: Option<Vec<String>>,
    /// Key words sought.
    pub key_words: Option<Vec<String>>,
    /// Description (optional).
    pub description: Option<String>,
    /// Kind sought.
    pub data_type: Option<String>,
    /// Subscribable flag (optional).
    pub subscribe_confirm: Option<String>,
    /// Tessera's extension: the buyer's X25519 public key (32 bytes, base64) that the delivery
    /// key is sealed to at settlement.
    pub public_key: Option<String>,
}

/// A validated demand (stored; served with the standard's names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Demand {
    /// The buyer.
    pub demander: String,
    /// Categories.
    pub data_category: Vec<String>,
    /// Key words.
    pub key_words: Vec<String>,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub description: Option<String>,
    /// Kind.
    pub data_type: String,
    /// Subscribable flag.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub subscribe_confirm: Option<String>,
    /// The buyer's X25519 public key, base64.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub public_key: Option<String>,
}

impl RegisterDemand {
    /// Checks table A.17 (and the extension key's shape).
    ///
    /// # Errors
    /// The first missing or invalid field.
    pub fn validate(self) -> Result<Demand, TradeError> {
        let public_key = opt_text(self.public_key, "public_key", MAX_SHORT)?;
        if let Some(k) = &public_key {
            BuyerPublicKey::parse(k)?;
        }
        Ok(Demand {
            demander: text(self.demander, "demander", MAX_SHORT)?,
            data_category: list(self.data_category, "data_category")?,
            key_words: list(self.key_words, "key_words")?,
            description: opt_text(self.description, "description", MAX_LONG)?,
            data_type: text(self.data_type, "data_type", MAX_SHORT)?,
            subscribe_confirm: opt_text(self.subscribe_confirm, "subscribe_confirm", MAX_SHORT)?,
            public_key,
        })
    }
}

/// `/publishDemand` and `/revokeDemand` (tables A.20, A.26).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemandAction {
    /// The buyer.
    pub demander: Option<String>,
    /// Demand number.
    #[serde(rename = "demandID")]
    pub demand_id: Option<String>,
}

impl DemandAction {
    /// Checks both fields.
    ///
    /// # Errors
    /// The first missing or invalid field.
    pub fn validate(self) -> Result<(String, String), TradeError> {
        Ok((
            text(self.demander, "demander", MAX_SHORT)?,
            text(self.demand_id, "demandID", MAX_SHORT)?,
        ))
    }
}

/// `/queryPublishedDemand` (table A.23).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemandRef {
    /// Demand number.
    #[serde(rename = "demandID")]
    pub demand_id: Option<String>,
}

impl DemandRef {
    /// Checks the field.
    ///
    /// # Errors
    /// Missing or invalid `demandID`.
    pub fn validate(self) -> Result<String, TradeError> {
        text(self.demand_id, "demandID", MAX_SHORT)
    }
}

/// `/confirmDemand` (table A.29, plus Tessera's licence terms).
///
/// `usage_restrictions` defaults to [`DEFAULT_USAGE_RESTRICTIONS`]; `license_term` defaults to
/// one year from the settlement.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmDemand {
    /// The buyer.
    pub demander: Option<String>,
    /// Demand number.
    #[serde(rename = "demandID")]
    pub demand_id: Option<String>,
    /// Registration number of the chosen data.
    #[serde(rename = "registrationID")]
    pub registration_id: Option<String>,
    /// Dataset id (required for controlled data).
    #[serde(rename = "dataID")]
    pub data_id: Option<String>,
}

/// The usage restrictions a licence states when the confirmation names none.
pub const DEFAULT_USAGE_RESTRICTIONS: &str =
    "no redistribution, no use outside the licence's usage policy, no unlawful use";

/// A validated confirmation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmation {
    /// The buyer.
    pub demander: String,
    /// Demand number.
    pub demand_id: String,
    /// The chosen data.
    pub data: DataRef,
}

impl ConfirmDemand {
    /// Checks table A.29.
    ///
    /// # Errors
    /// The first missing or invalid field.
    pub fn validate(self) -> Result<Confirmation, TradeError> {
        let demander = text(self.demander, "demander", MAX_SHORT)?;
        let demand_id = text(self.demand_id, "demandID", MAX_SHORT)?;
        let data = PublishedDataRef {
            registration_id: self.registration_id,
            data_id: self.data_id,
        }
        .validate()?;
        Ok(Confirmation {
            demander,
            demand_id,
            data,
        })
    }
}

/// `/queryDemandForSettlement`, `/settlement`, `/querySettlement`, `/queryDeliverResult`
/// (tables A.32, A.35, A.39, A.45).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRef {
    /// Confirmation number.
    #[serde(rename = "confirmID")]
    pub confirm_id: Option<String>,
}

impl ConfirmRef {
    /// Checks the field.
    ///
    /// # Errors
    /// Missing or invalid `confirmID`.
    pub fn validate(self) -> Result<String, TradeError> {
        text(self.confirm_id, "confirmID", MAX_SHORT)
    }
}

/// `/updateLicenses` (table A.54, plus Tessera's `licensesID` and `license_term`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateLicenses {
    /// Provider party.
    pub owner: Option<String>,
    /// Dataset id.
    #[serde(rename = "dataID")]
    pub data_id: Option<String>,
    /// Which licence (required when the data has more than one in force).
    #[serde(rename = "licensesID")]
    pub licenses_id: Option<String>,
    /// The new term (default: the old one).
    pub license_term: Option<crate::licence::LicenceTerm>,
}

/// A validated `/updateLicenses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenceUpdate {
    /// Provider party.
    pub owner: String,
    /// Dataset id.
    pub data_id: String,
    /// Which licence.
    pub licenses_id: Option<String>,
    /// New term.
    pub license_term: Option<crate::licence::LicenceTerm>,
}

impl UpdateLicenses {
    /// Checks table A.54 and the extension fields.
    ///
    /// # Errors
    /// The first missing or invalid field.
    pub fn validate(self) -> Result<LicenceUpdate, TradeError> {
        if let Some(t) = &self.license_term {
            t.check()?;
        }
        Ok(LicenceUpdate {
            owner: text(self.owner, "owner", MAX_SHORT)?,
            data_id: text(self.data_id, "dataID", MAX_SHORT)?,
            licenses_id: opt_text(self.licenses_id, "licensesID", MAX_SHORT)?,
            license_term: self.license_term,
        })
    }
}

/// Tessera's `/revokeLicenses`: the data's owner withdraws a licence it issued (table A.37,
/// `licensesID`, with every policy delivered under it) or one delivered policy (table A.48,
/// `policyId`) — exactly one of the two. The standard has no revocation of a licence; EDC's
/// policy monitor is the model: running jobs under it end, new ones are refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeLicenses {
    /// Provider party (the licensor).
    pub owner: Option<String>,
    /// The licence to revoke.
    #[serde(rename = "licensesID")]
    pub licenses_id: Option<String>,
    /// The policy to revoke.
    #[serde(rename = "policyId")]
    pub policy_id: Option<String>,
    /// Why (recorded in the audit chain and in the ended jobs' errors); default: none given.
    pub reason: Option<String>,
}

/// What a validated `/revokeLicenses` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// A licence number.
    Licence(String),
    /// A policy id.
    Policy(String),
}

/// A validated `/revokeLicenses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Provider party.
    pub owner: String,
    /// What to revoke.
    pub subject: Revoked,
    /// Why (may be empty).
    pub reason: String,
}

impl RevokeLicenses {
    /// Checks the body: `owner`, exactly one of `licensesID` and `policyId`, an optional
    /// `reason` of at most [`MAX_LONG`] bytes.
    ///
    /// # Errors
    /// The first missing or invalid field.
    pub fn validate(self) -> Result<Revocation, TradeError> {
        let owner = text(self.owner, "owner", MAX_SHORT)?;
        let licence = opt_text(self.licenses_id, "licensesID", MAX_SHORT)?;
        let policy = opt_text(self.policy_id, "policyId", MAX_SHORT)?;
        let subject = match (licence, policy) {
            (Some(l), None) => Revoked::Licence(l),
            (None, Some(p)) => Revoked::Policy(p),
            (None, None) => {
                return Err(TradeError::invalid(
                    "licensesID",
                    "name the licence (licensesID) or the policy (policyId) to revoke",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(TradeError::invalid(
                    "policyId",
                    "name either a licence (licensesID) or a policy (policyId), not both",
                ));
            }
        };
        let reason = opt_text(self.reason, "reason", MAX_LONG)?.unwrap_or_default();
        Ok(Revocation {
            owner,
            subject,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_given_twice_is_refused_at_any_depth() {
        for bad in [
            r#"{"policyId":"a","policyId":"b"}"#,
            r#"{"licenses":{"licensesID":"x","licensesID":"y"}}"#,
            r#"{"useScenes":[{"useSence":"psi","useSence":"preview"}]}"#,
        ] {
            let e = reject_duplicate_keys("body", bad.as_bytes()).expect_err(bad);
            assert!(e.to_string().contains("given twice"), "{e}");
        }
        for fine in [
            r#"{"a":1,"b":{"a":2},"c":[{"a":3},{"a":4}]}"#,
            "[]",
            "not json",
            "",
        ] {
            assert!(
                reject_duplicate_keys("body", fine.as_bytes()).is_ok(),
                "{fine}"
            );
        }
    }

    fn register() -> serde_json::Value {
        serde_json::json!({
            "owner": "acme", "key_words": ["credit", "risk"], "dataID": "customers",
            "description": "customer records", "data_type": "dataset", "data_format": "csv",
            "data_size": 12.5, "data_category": ["finance"],
            "collection_time": "2026-10-01 08:00:00", "country": "CN",
            "resource_url": "tessera://acme/customers",
            "ownership_confirm": "https://acme.example/ownership", "public_key": "pk"
        })
    }

    fn parse<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Result<T, TradeError> {
        parse_body("body", &serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn every_required_field_of_a_2_is_named_when_missing_or_blank() {
        let ok = parse::<RegisterData>(&register())
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(ok.key_words, ["credit", "risk"]);
        for field in [
            "owner",
            "key_words",
            "dataID",
            "description",
            "data_type",
            "data_format",
            "data_size",
            "data_category",
            "collection_time",
            "country",
            "resource_url",
            "ownership_confirm",
            "public_key",
        ] {
            let mut v = register();
            v.as_object_mut().unwrap().remove(field);
            let err = parse::<RegisterData>(&v).unwrap().validate().unwrap_err();
            assert_eq!(err, TradeError::MissingField(field), "{field}");
        }
        let mut v = register();
        v["owner"] = "  ".into();
        assert_eq!(
            parse::<RegisterData>(&v).unwrap().validate().unwrap_err(),
            TradeError::MissingField("owner")
        );
        let mut v = register();
        v["collection_time"] = "yesterday".into();
        assert!(matches!(
            parse::<RegisterData>(&v).unwrap().validate(),
            Err(TradeError::InvalidField {
                field: "collection_time",
                ..
            })
        ));
        let mut v = register();
        v["key_words"] = serde_json::json!(vec!["w"; MAX_ITEMS + 1]);
        // Duplicates collapse, but the bound is on what was sent.
        assert!(matches!(
            parse::<RegisterData>(&v).unwrap().validate(),
            Err(TradeError::InvalidField {
                field: "key_words",
                ..
            })
        ));
        let mut v = register();
        v["surprise"] = 1.into();
        assert!(matches!(
            parse::<RegisterData>(&v),
            Err(TradeError::Malformed { .. })
        ));
    }

    #[test]
    fn prices_are_exact_micro_units_and_agree_with_free() {
        let publish = |free: serde_json::Value, price: Option<&str>| {
            let mut v =
                serde_json::json!({"owner": "acme", "registrationID": "reg-1", "free": free});
            if let Some(p) = price {
                v["price"] = serde_json::from_str(p).unwrap();
            }
            parse::<PublishData>(&v).and_then(PublishData::validate)
        };
        assert_eq!(
            publish(false.into(), Some("12.34"))
                .unwrap()
                .terms
                .price_micros,
            12_340_000
        );
        assert_eq!(
            publish(false.into(), Some("0.000001"))
                .unwrap()
                .terms
                .price_micros,
            1
        );
        assert_eq!(publish(true.into(), None).unwrap().terms.price_micros, 0);
        assert_eq!(
            publish(true.into(), Some("0")).unwrap().terms.price_micros,
            0
        );
        assert_eq!(
            publish(false.into(), None).unwrap_err(),
            TradeError::MissingField("price")
        );
        for bad in ["0", "-1", "0.0000001", "1e30"] {
            assert!(
                matches!(
                    publish(false.into(), Some(bad)),
                    Err(TradeError::InvalidField { field: "price", .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            publish(true.into(), Some("5")),
            Err(TradeError::InvalidField { field: "price", .. })
        ));
        assert!(matches!(
            publish("yes".into(), None),
            Err(TradeError::Malformed { .. })
        ));
        assert_eq!(price_number(12_340_000).to_string(), "12.34");
    }

    #[test]
    fn controlled_data_carries_the_fixed_owner_and_registration_number() {
        let body = |owner: &str, reg: &str| {
            serde_json::json!({"owner": owner, "dataID": "d", "registrationID": reg,
                "protocol": "tessera-usage-v1", "key_words": ["k"], "free": true})
        };
        let ok = parse::<PublishDatasets>(&body(
            crate::CONTROLLED_OWNER,
            crate::CONTROLLED_REGISTRATION_ID,
        ))
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(ok.0.data_id, "d");
        assert!(matches!(
            parse::<PublishDatasets>(&body("acme", crate::CONTROLLED_REGISTRATION_ID))
                .unwrap()
                .validate(),
            Err(TradeError::InvalidField { field: "owner", .. })
        ));
        assert!(matches!(
            parse::<PublishDatasets>(&body(crate::CONTROLLED_OWNER, "reg-1"))
                .unwrap()
                .validate(),
            Err(TradeError::InvalidField {
                field: "registrationID",
                ..
            })
        ));
        let r = PublishedDataRef {
            registration_id: Some(crate::CONTROLLED_REGISTRATION_ID.into()),
            data_id: None,
        };
        assert_eq!(
            r.validate().unwrap_err(),
            TradeError::MissingField("dataID")
        );
    }

    #[test]
    fn a_demand_key_must_be_an_x25519_key() {
        let mut v = serde_json::json!({"demander": "bob", "data_category": ["finance"],
            "key_words": ["credit"], "data_type": "dataset"});
        assert!(
            parse::<RegisterDemand>(&v)
                .unwrap()
                .validate()
                .unwrap()
                .public_key
                .is_none()
        );
        v["public_key"] = "AAAA".into();
        assert!(matches!(
            parse::<RegisterDemand>(&v).unwrap().validate(),
            Err(TradeError::InvalidField {
                field: "public_key",
                ..
            })
        ));
        let (_, pk) = crate::seal::BuyerPrivateKey::derive(&[9; 32]);
        v["public_key"] = pk.to_text().into();
        assert!(
            parse::<RegisterDemand>(&v)
                .unwrap()
                .validate()
                .unwrap()
                .public_key
                .is_some()
        );
    }
}
