//! Matching published data against a published demand (T/AI 123.12 §"需求匹配": key words
//! and categories).
//!
//! The rule, chosen where the standard is silent: a published data item matches a demand when
//! its `data_type` equals the demand's (ignoring case; controlled datasets count as
//! `dataset`) and at least one category or key word is shared. Words are compared after
//! Unicode lower-casing and trimming. The score is 2 × shared categories, plus shared key
//! words, plus key words of the demand found in the data's description; results are ordered by score,
//! then by registration number and dataset id, so a listing is stable.

use serde::Serialize;

/// What matching sees of a published data item.
#[derive(Debug, Clone, Copy)]
pub struct Offer<'a> {
    /// Registration number.
    pub registration_id: &'a str,
    /// Dataset id.
    pub data_id: &'a str,
    /// Kind.
    pub data_type: &'a str,
    /// Categories (none for controlled data).
    pub data_category: &'a [String],
    /// Key words.
    pub key_words: &'a [String],
    /// Description.
    pub description: &'a str,
}

/// What matching sees of a demand.
#[derive(Debug, Clone, Copy)]
pub struct Want<'a> {
    /// Kind.
    pub data_type: &'a str,
    /// Categories.
    pub data_category: &'a [String],
    /// Key words.
    pub key_words: &'a [String],
}

/// One match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Match {
    /// Registration number.
    #[serde(rename = "registrationID")]
    pub registration_id: String,
    /// Dataset id.
    #[serde(rename = "dataID")]
    pub data_id: String,
    /// Score (higher is better).
    pub score: u32,
    /// Shared categories.
    pub matched_categories: Vec<String>,
    /// Shared key words (including those found in the description).
    pub matched_key_words: Vec<String>,
}

fn norm(s: &str) -> String {
    s.trim().to_lowercase()
}

fn shared(a: &[String], b: &[String]) -> Vec<String> {
    let b: Vec<String> = b.iter().map(|s| norm(s)).collect();
    let mut out: Vec<String> = Vec::new();
    for x in a {
        let n = norm(x);
        if b.contains(&n) && !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// Scores one offer against a demand; `None` when it does not match.
pub fn score(want: &Want<'_>, offer: &Offer<'_>) -> Option<Match> {
    if norm(want.data_type) != norm(offer.data_type) {
        return None;
    }
    let categories = shared(want.data_category, offer.data_category);
    let mut words = shared(want.key_words, offer.key_words);
    let description = norm(offer.description);
    let mut in_description = 0u32;
    for w in want.key_words {
        let n = norm(w);
        if !n.is_empty() && description.contains(&n) && !words.contains(&n) {
            words.push(n);
            in_description += 1;
        }
    }
    let direct = u32::try_from(words.len()).unwrap_or(u32::MAX) - in_description;
    if categories.is_empty() && words.is_empty() {
        return None;
    }
    let score = 2 * u32::try_from(categories.len()).unwrap_or(u32::MAX) + direct + in_description;
    Some(Match {
        registration_id: offer.registration_id.to_string(),
        data_id: offer.data_id.to_string(),
        score,
        matched_categories: categories,
        matched_key_words: words,
    })
}

/// Every matching offer, best first.
pub fn rank(want: &Want<'_>, offers: &[Offer<'_>]) -> Vec<Match> {
    let mut out: Vec<Match> = offers.iter().filter_map(|o| score(want, o)).collect();
    out.sort_by(|a, b| {
        b.score
            .cmp(&a.score)
            .then_with(|| a.registration_id.cmp(&b.registration_id))
            .then_with(|| a.data_id.cmp(&b.data_id))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn type_gates_and_categories_weigh_more_than_words() {
        let cats = v(&["Finance", "retail"]);
        let words = v(&["credit", "Risk"]);
        let want = Want {
            data_type: "dataset",
            data_category: &cats,
            key_words: &words,
        };
        let a_cats = v(&["finance"]);
        let a_words = v(&[]);
        let b_cats = v(&["health"]);
        let b_words = v(&["risk", "credit"]);
        let none: Vec<String> = vec![];
        let offers = [
            Offer {
                registration_id: "r1",
                data_id: "a",
                data_type: "Dataset",
                data_category: &a_cats,
                key_words: &a_words,
                description: "",
            },
            Offer {
                registration_id: "r2",
                data_id: "b",
                data_type: "dataset",
                data_category: &b_cats,
                key_words: &b_words,
                description: "",
            },
            Offer {
                registration_id: "r3",
                data_id: "c",
                data_type: "model",
                data_category: &a_cats,
                key_words: &b_words,
                description: "",
            },
            Offer {
                registration_id: "r4",
                data_id: "d",
                data_type: "dataset",
                data_category: &none,
                key_words: &none,
                description: "Consumer CREDIT records",
            },
            Offer {
                registration_id: "r5",
                data_id: "e",
                data_type: "dataset",
                data_category: &b_cats,
                key_words: &none,
                description: "weather",
            },
        ];
        let ranked = rank(&want, &offers);
        let ids: Vec<&str> = ranked.iter().map(|m| m.data_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "d"]);
        assert_eq!(ranked[0].score, 2);
        assert_eq!(ranked[1].matched_key_words, v(&["credit", "risk"]));
        assert_eq!(ranked[2].matched_key_words, v(&["credit"]));
    }
}
