//! The table of rules and the API come from the same list: every RPC of the `Operator` and
//! `Trade` services names a `tessera_auth::Operation` (with its rule), and every operation is
//! an RPC. A new RPC without a rule fails here.

use std::collections::BTreeSet;

use tessera_auth::Operation;

const PROTO: &str = include_str!("../../proto/tessera.proto");

fn rpcs_of(service: &str) -> BTreeSet<String> {
    let start = PROTO
        .find(&format!("service {service} {{"))
        .unwrap_or_else(|| panic!("service {service}"));
    let body = &PROTO[start..];
    let end = body.find("\n}").expect("end of service");
    body[..end]
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .map(|l| l.split('(').next().unwrap_or("").trim().to_owned())
        .collect()
}

fn operator_rpcs() -> BTreeSet<String> {
    let operator = rpcs_of("Operator");
    let trade = rpcs_of("Trade");
    assert!(operator.is_disjoint(&trade), "{operator:?} {trade:?}");
    operator.union(&trade).cloned().collect()
}

#[test]
fn every_rpc_has_a_rule_and_every_rule_an_rpc() {
    let rpcs = operator_rpcs();
    assert!(rpcs.len() > 40, "parsed {rpcs:?}");
    let ops: BTreeSet<String> = Operation::ALL.iter().map(|o| o.name().to_owned()).collect();
    let without_rule: Vec<_> = rpcs.difference(&ops).collect();
    let without_rpc: Vec<_> = ops.difference(&rpcs).collect();
    assert!(
        without_rule.is_empty(),
        "RPCs without a rule: {without_rule:?}"
    );
    assert!(
        without_rpc.is_empty(),
        "rules without an RPC: {without_rpc:?}"
    );
}
