//! The table, row by row: for every operation a good call, a wrong role and someone else's
//! resource (the gateway's tests add no token and bad tokens, which never reach the table).

use super::*;

fn user(name: &str, roles: &[Role], groups: &[&str]) -> Caller {
    Caller::User(Principal {
        user: name.into(),
        roles: Roles::of(roles),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        token_expires_at_ms: None,
    })
}

fn operator() -> Caller {
    user("root", &[Role::Operator], &[])
}

/// A target where everything named belongs to `owner` (and, for jobs, was submitted by it).
fn owned_by(owner: &str) -> Target<'_> {
    Target {
        user: Some(owner),
        party_owner: Some(owner),
        party: Some("p-of-owner"),
        licensee: Some(owner),
        licensor_owner: Some(owner),
        job_buyer: Some(owner),
        buyer_party_owner: Some(owner),
        dataset_in_buyer_party: true,
        worker_id: Some("w-of-owner"),
        voucher: false,
    }
}

/// The caller who may perform `op` on `owned_by("alice")`.
fn rightful(op: Operation) -> Caller {
    match op.rule().who {
        Who::Worker => Caller::Worker {
            party: "p-of-owner".into(),
            worker_id: "w-of-owner".into(),
        },
        Who::Registrant => Caller::Registrant {
            party: "p-of-owner".into(),
        },
        Who::Operator => operator(),
        Who::Roles(r) | Who::OnlyRoles(r) => user("alice", r, &[]),
        Who::AnyUser => user("alice", &[Role::Buyer], &[]),
    }
}

#[test]
fn every_operation_admits_its_rightful_caller_and_refuses_others() {
    for &op in Operation::ALL {
        let target = owned_by("alice");
        let good = rightful(op);
        assert_eq!(authorize(op, &good, &target), Ok(()), "{op:?} by {good:?}");

        // Someone else's resource: a user with every role but the operator's, a stranger.
        let mallory = user(
            "mallory",
            &[Role::Provider, Role::Buyer, Role::Developer],
            &[],
        );
        let outcome = authorize(op, &mallory, &target);
        match (op.rule().who, op.rule().scope) {
            (_, Scope::Global | Scope::OwnRows) if op.rule().who == Who::AnyUser => {
                assert_eq!(outcome, Ok(()), "{op:?}: open to every user");
            }
            _ => assert!(outcome.is_err(), "{op:?}: a stranger passed"),
        }

        // A worker may call no user operation, a user no worker operation.
        let worker = Caller::Worker {
            party: "p-of-owner".into(),
            worker_id: "w-of-owner".into(),
        };
        if !matches!(op.rule().who, Who::Worker | Who::Registrant) {
            assert!(
                matches!(authorize(op, &worker, &target), Err(Denied::Role { .. })),
                "{op:?}"
            );
        }
        if matches!(op.rule().who, Who::Worker | Who::Registrant) {
            assert!(
                matches!(
                    authorize(op, &operator(), &target),
                    Err(Denied::Role { .. })
                ),
                "{op:?}: even the operator uses a worker's credential"
            );
        }
    }
}

#[test]
fn a_worker_registers_again_only_as_itself() {
    let me = Caller::Worker {
        party: "p".into(),
        worker_id: "w-1".into(),
    };
    let target = |party, worker_id| Target {
        party: Some(party),
        worker_id: Some(worker_id),
        ..Target::default()
    };
    let op = Operation::RegisterWorker;
    assert_eq!(authorize(op, &me, &target("p", "w-1")), Ok(()));
    for (party, worker) in [("p", "w-2"), ("q", "w-1"), ("p", "")] {
        assert!(
            matches!(
                authorize(op, &me, &target(party, worker)),
                Err(Denied::NotOwner { .. })
            ),
            "{party} {worker}"
        );
    }
    // A registration token registers any id of its own party only.
    let registrant = Caller::Registrant { party: "p".into() };
    assert_eq!(authorize(op, &registrant, &target("p", "w-9")), Ok(()));
    assert!(authorize(op, &registrant, &target("q", "w-9")).is_err());
    // A worker credential is no user's token.
    assert!(matches!(
        authorize(Operation::ListJobs, &me, &Target::default()),
        Err(Denied::Role { .. })
    ));
}

#[test]
fn the_operator_passes_ownership_except_where_it_acts_for_no_one() {
    for &op in Operation::ALL {
        let outcome = authorize(op, &operator(), &owned_by("alice"));
        match op.rule().who {
            Who::Worker | Who::Registrant | Who::OnlyRoles(_) => {
                assert!(outcome.is_err(), "{op:?}")
            }
            _ => assert_eq!(outcome, Ok(()), "{op:?}"),
        }
    }
}

#[test]
fn operator_only_operations_refuse_every_other_role_and_are_audited() {
    let everyone_else = user("bob", &[Role::Provider, Role::Buyer, Role::Developer], &[]);
    for &op in Operation::ALL {
        if op.rule().who == Who::Operator {
            assert!(op.rule().audit_denial, "{op:?}: admin denials are audited");
            assert!(
                matches!(
                    authorize(op, &everyone_else, &owned_by("bob")),
                    Err(Denied::Role { .. })
                ),
                "{op:?}"
            );
        }
    }
}

#[test]
fn a_submission_is_checked_part_by_part() {
    let alice = user("alice", &[Role::Buyer], &["analysts"]);
    let ok = Target {
        user: Some("alice"),
        licensee: Some("alice"),
        buyer_party_owner: Some("alice"),
        dataset_in_buyer_party: true,
        ..Target::default()
    };
    assert_eq!(authorize(Operation::SubmitJob, &alice, &ok), Ok(()));
    // Licensed to a group alice is recorded in.
    let group = Target {
        licensee: Some("analysts"),
        ..ok
    };
    assert_eq!(authorize(Operation::SubmitJob, &alice, &group), Ok(()));
    for bad in [
        Target {
            user: Some("bob"),
            ..ok
        },
        Target {
            licensee: Some("bob"),
            ..ok
        },
        Target {
            licensee: Some("other-group"),
            ..ok
        },
        Target {
            buyer_party_owner: Some("bob"),
            ..ok
        },
        Target {
            buyer_party_owner: None,
            ..ok
        },
        Target {
            dataset_in_buyer_party: false,
            ..ok
        },
    ] {
        assert!(
            matches!(
                authorize(Operation::SubmitJob, &alice, &bad),
                Err(Denied::NotOwner { .. })
            ),
            "{bad:?}"
        );
    }
    // A provider-only user may not submit, nor may the operator.
    let prov = user("alice", &[Role::Provider], &["analysts"]);
    assert!(authorize(Operation::SubmitJob, &prov, &ok).is_err());
    assert!(authorize(Operation::SubmitJob, &operator(), &ok).is_err());
}

#[test]
fn denials_name_no_owner() {
    let mallory = user("mallory", &[Role::Buyer], &[]);
    let t = owned_by("alice-the-secret-owner");
    for &op in Operation::ALL {
        if let Err(e) = authorize(op, &mallory, &t) {
            assert!(!e.to_string().contains("alice"), "{op:?}: {e}");
        }
    }
}

#[test]
fn roles_parse_and_print() {
    let r: Roles = "buyer,provider".parse().expect("roles");
    assert!(r.has(Role::Buyer) && r.has(Role::Provider) && !r.has(Role::Operator));
    assert_eq!(r.to_string(), "provider,buyer");
    assert!("buyer,admin".parse::<Roles>().is_err());
    assert!("".parse::<Roles>().is_err());
}

#[test]
fn operation_names_are_unique() {
    let names: std::collections::HashSet<_> = Operation::ALL.iter().map(|o| o.name()).collect();
    assert_eq!(names.len(), Operation::ALL.len());
}

#[test]
fn architecture_md_shows_the_table_as_the_code_has_it() {
    let doc = include_str!("../../ARCHITECTURE.md");
    let table = rules_markdown();
    assert!(
        doc.contains(&table),
        "ARCHITECTURE.md must hold the table exactly as `rules_markdown()` renders it:\n{table}"
    );
}

#[test]
fn a_customer_deposits_its_own_cash_and_only_the_operator_grants_vouchers() {
    let alice = user("alice", &[Role::Buyer], &[]);
    let cash = Target {
        user: Some("alice"),
        ..Target::default()
    };
    let voucher = Target {
        voucher: true,
        ..cash
    };
    assert_eq!(authorize(Operation::Deposit, &alice, &cash), Ok(()));
    assert!(authorize(Operation::Deposit, &alice, &voucher).is_err());
    assert_eq!(authorize(Operation::Deposit, &operator(), &voucher), Ok(()));
}
