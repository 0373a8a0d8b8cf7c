//! The crate's tests on real evidence (the samples in `testdata/`, shipped by `dcap-qvl`
//! 0.7.1 and `sev` 8.0.0, verified at their pinned times as `testdata/README.md` tables) and
//! the negative cases: tampering, wrong measurements, reused nonces, expired collateral,
//! debug TEEs, and the key broker's refusals.

use tessera_tee::*;

const SGX_AT: u64 = 1_750_334_171;
const TDX_AT: u64 = 1_750_331_763;
const TD15EX_AT: u64 = 1_791_421_786;
/// The outdated sample's collateral issue time (its TCB info's `issueDate`).
const OUTDATED_AT: u64 = 1_771_412_331;

const SGX_MRENCLAVE: &str = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb";
const TDX_MRTD: &str = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7";
const SNP_MEASUREMENT: &str = "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f";

fn data(path: &str) -> Vec<u8> {
    let p = format!("{}/testdata/{path}", manifest_dir());
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn dcap(name: &str) -> (Vec<u8>, Vec<u8>) {
    (
        data(&format!("dcap-qvl-0.7.1/{name}")),
        data(&format!("dcap-qvl-0.7.1/{name}_collateral.json")),
    )
}

fn snp() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    (
        data("sev-8.0.0/report_milan.hex"),
        data("sev-8.0.0/vcek_milan.der"),
        data("sev-8.0.0/cert_chain_milan"),
    )
}

fn policy(json: &str) -> AppraisalPolicy {
    AppraisalPolicy::from_json(json.as_bytes()).expect("policy")
}

/// A policy pinning every sample's measurement, strict otherwise (defaults).
fn strict_policy() -> AppraisalPolicy {
    policy(&format!(
        r#"{{"policy_id": "strict", "sgx": {{"mrenclave": ["{SGX_MRENCLAVE}"]}},
            "tdx": {{"mrtd": ["{TDX_MRTD}"]}}, "sev_snp": {{"measurement": ["{SNP_MEASUREMENT}"]}}}}"#
    ))
}

fn reasons(a: &Appraisal) -> Vec<Reason> {
    a.reasons.clone()
}

// ---- The README's table ----

#[test]
fn sgx_sample_verifies_with_its_status_and_advisories_and_strict_policy_refuses() {
    let (q, c) = dcap("sgx_quote");
    let ev = verify_dcap_quote(&q, &c, SGX_AT).expect("accepted by verify");
    assert_eq!(ev.kind, TeeKind::Sgx);
    let tcb = ev.tcb.clone().expect("tcb");
    assert_eq!(tcb.status, "ConfigurationAndSWHardeningNeeded");
    assert_eq!(tcb.advisory_ids, ["INTEL-SA-00289", "INTEL-SA-00615"]);
    assert!(ev.report_data.starts_with(b"Hello, world!"));
    let a = appraise(&ev, &strict_policy(), Binding::NotChecked, SGX_AT);
    assert!(!a.accepted);
    assert_eq!(
        reasons(&a),
        [
            Reason::TcbStatusNotAllowed {
                status: "ConfigurationAndSWHardeningNeeded".into()
            },
            Reason::BindingNotChecked
        ]
    );
}

#[test]
fn tdx_sample_verifies_up_to_date_and_strict_policy_refuses_the_dynamic_platform() {
    let (q, c) = dcap("tdx_quote");
    let ev = verify_dcap_quote(&q, &c, TDX_AT).expect("accepted");
    assert_eq!(ev.kind, TeeKind::Tdx);
    assert_eq!(ev.tcb.as_ref().map(|t| t.status.as_str()), Some("UpToDate"));
    let a = appraise(&ev, &strict_policy(), Binding::NotChecked, TDX_AT);
    let r = reasons(&a);
    assert!(r.contains(&Reason::PlatformFlag {
        flag: "dynamic_platform".into()
    }));
    // Every failed rule is listed, not only the first.
    assert!(r.contains(&Reason::PlatformFlag {
        flag: "cached_keys".into()
    }));
    assert!(r.contains(&Reason::PlatformFlag {
        flag: "smt_enabled".into()
    }));
    assert!(r.contains(&Reason::BindingNotChecked));
}

#[test]
fn td15ex_sample_verifies_up_to_date() {
    let (q, c) = dcap("tdx_quote_td15ex");
    let ev = verify_dcap_quote(&q, &c, TD15EX_AT).expect("accepted");
    assert_eq!(ev.kind, TeeKind::Tdx);
    assert_eq!(ev.tcb.as_ref().map(|t| t.status.as_str()), Some("UpToDate"));
}

#[test]
fn outdated_tdx_sample_is_refused_for_no_matching_tcb_level() {
    let (q, c) = dcap("tdx_quote_outdated");
    match verify_dcap_quote(&q, &c, OUTDATED_AT) {
        Err(VerifyError::QuoteRejected { detail }) => {
            assert!(detail.contains("No matching TCB level"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn snp_sample_verifies_with_and_without_the_chain_file() {
    let (r, vcek, chain) = snp();
    for chain in [None, Some(&chain[..])] {
        let ev = verify_snp_report(&r, &vcek, chain, SGX_AT).expect("accepted");
        assert_eq!(ev.kind, TeeKind::SevSnp);
        let Measurements::SevSnp {
            measurement, vmpl, ..
        } = &ev.measurements
        else {
            panic!("{:?}", ev.measurements)
        };
        assert_eq!(measurement, SNP_MEASUREMENT);
        assert_eq!(*vmpl, 0);
    }
}

#[test]
fn snp_appraisal_lists_smt_and_accepts_when_configured() {
    let (r, vcek, chain) = snp();
    let ev = verify_snp_report(&r, &vcek, Some(&chain), SGX_AT).expect("accepted");
    let a = appraise(&ev, &strict_policy(), Binding::NotChecked, SGX_AT);
    assert_eq!(
        reasons(&a),
        [
            Reason::PlatformFlag { flag: "smt".into() },
            Reason::BindingNotChecked
        ]
    );
    let p = policy(&format!(
        r#"{{"policy_id": "snp", "require_binding": false, "sev_snp": {{"measurement": ["{SNP_MEASUREMENT}"],
            "allow_smt": true, "min_reported_tcb": {{"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}}}}}}"#
    ));
    let a = appraise(&ev, &p, Binding::NotChecked, SGX_AT);
    assert!(a.accepted, "{:?}", a.reasons);
    let p = policy(&format!(
        r#"{{"policy_id": "snp", "require_binding": false, "sev_snp": {{"measurement": ["{SNP_MEASUREMENT}"],
            "allow_smt": true, "min_reported_tcb": {{"bootloader": 3, "tee": 0, "snp": 9, "microcode": 115}}}}}}"#
    ));
    let a = appraise(&ev, &p, Binding::NotChecked, SGX_AT);
    assert_eq!(
        reasons(&a),
        [Reason::ReportedTcbTooLow {
            component: "snp".into(),
            value: 8,
            min: 9
        }]
    );
}

// ---- Negative cases ----

#[test]
fn a_flipped_byte_in_any_report_body_is_refused() {
    // Quote header is 48 bytes; the report body follows (SGX 384 bytes, TD 584+); a v5
    // quote (TD 1.5) has a 6-byte body descriptor first.
    for (name, at, body) in [
        ("sgx_quote", SGX_AT, 48),
        ("tdx_quote", TDX_AT, 48),
        ("tdx_quote_td15ex", TD15EX_AT, 54),
    ] {
        let (q, c) = dcap(name);
        for offset in [body, body + 64, body + 300] {
            let mut bad = q.clone();
            bad[offset] ^= 0x01;
            let e = verify_dcap_quote(&bad, &c, at).expect_err(name);
            assert!(
                matches!(e, VerifyError::QuoteRejected { .. }),
                "{name} @{offset}: {e}"
            );
        }
    }
    let (r, vcek, chain) = snp();
    let raw = hex::decode(String::from_utf8(r).unwrap().trim()).unwrap();
    for offset in [0x50, 0x90, 0x29f] {
        let mut bad = raw.clone();
        bad[offset] ^= 0x01;
        let e = verify_snp_report(&bad, &vcek, Some(&chain), SGX_AT).expect_err("flipped");
        assert!(
            matches!(
                e,
                VerifyError::SignatureInvalid { .. }
                    | VerifyError::VcekMismatch { .. }
                    | VerifyError::Malformed { .. }
            ),
            "@{offset}: {e}"
        );
    }
}

#[test]
fn a_wrong_measurement_in_the_policy_is_refused_with_the_field_named() {
    let (q, c) = dcap("sgx_quote");
    let ev = verify_dcap_quote(&q, &c, SGX_AT).unwrap();
    let other = "00".repeat(32);
    let p = policy(&format!(
        r#"{{"policy_id": "p", "tcb_status_allow": ["UpToDate", "ConfigurationAndSWHardeningNeeded"],
            "sgx": {{"mrenclave": ["{other}"], "isv_prod_id": [7], "min_isv_svn": 1}}}}"#
    ));
    let a = appraise(&ev, &p, Binding::NotChecked, SGX_AT);
    assert_eq!(
        reasons(&a),
        [
            Reason::MeasurementNotAllowed {
                field: "mrenclave".into(),
                value: SGX_MRENCLAVE.into()
            },
            Reason::IsvProdIdNotAllowed { value: 0 },
            Reason::IsvSvnTooLow { value: 0, min: 1 },
            Reason::BindingNotChecked,
        ]
    );
    let (q, c) = dcap("tdx_quote");
    let ev = verify_dcap_quote(&q, &c, TDX_AT).unwrap();
    let p = policy(&format!(
        r#"{{"policy_id": "p", "allow_dynamic_platform": true, "allow_cached_keys": true, "allow_smt": true,
            "require_binding": false, "tdx": {{"mrtd": ["{TDX_MRTD}"], "rtmr3": ["{}"]}}}}"#,
        "11".repeat(48)
    ));
    let a = appraise(&ev, &p, Binding::NotChecked, TDX_AT);
    assert_eq!(
        reasons(&a),
        [Reason::MeasurementNotAllowed {
            field: "rtmr3".into(),
            value: "00".repeat(48)
        }]
    );
}

#[test]
fn advisories_on_the_deny_list_are_refused_and_allowed_statuses_warn() {
    let (q, c) = dcap("sgx_quote");
    let ev = verify_dcap_quote(&q, &c, SGX_AT).unwrap();
    let p = policy(&format!(
        r#"{{"policy_id": "p", "require_binding": false,
            "tcb_status_allow": ["UpToDate", "ConfigurationAndSWHardeningNeeded"],
            "sgx": {{"mrenclave": ["{SGX_MRENCLAVE}"]}}}}"#
    ));
    let a = appraise(&ev, &p, Binding::NotChecked, SGX_AT);
    assert!(a.accepted, "{:?}", a.reasons);
    assert!(!a.warnings.is_empty());
    assert_eq!(
        EarClaims::of(&a, 60).appraisal().map(|s| s.status),
        Some(EarStatus::Warning)
    );
    let mut p2 = p.clone();
    p2.advisory_deny = vec!["intel-sa-00615".into()];
    let a = appraise(&ev, &p2, Binding::NotChecked, SGX_AT);
    assert_eq!(
        reasons(&a),
        [Reason::AdvisoryDenied {
            id: "INTEL-SA-00615".into()
        }]
    );
    let mut p3 = p;
    p3.max_collateral_age_secs = Some(60);
    let a = appraise(&ev, &p3, Binding::NotChecked, SGX_AT);
    assert!(matches!(a.reasons[..], [Reason::CollateralTooOld { .. }]));
}

#[test]
fn expired_collateral_is_refused_with_its_date() {
    let (q, c) = dcap("sgx_quote");
    // TCB info nextUpdate 2025-07-19T10:56:11Z (1752922571); QE identity 10:01:18Z
    // (1752919278).
    let e = verify_dcap_quote(&q, &c, 1_752_920_000).expect_err("expired");
    assert_eq!(
        e,
        VerifyError::CollateralExpired {
            what: "QE identity".into(),
            expired_at: 1_752_919_278,
            at: 1_752_920_000
        }
    );
    let e = verify_dcap_quote(&q, &c, 1_752_923_000).expect_err("expired");
    assert!(
        matches!(&e, VerifyError::CollateralExpired { what, .. } if what == "TCB info"),
        "{e}"
    );
    let e = verify_dcap_quote(&q, &c, 1_700_000_000).expect_err("not yet valid");
    assert!(
        matches!(e, VerifyError::CollateralNotYetValid { .. }),
        "{e}"
    );
    // SEV-SNP: certificates far in the future are past their notAfter.
    let (r, vcek, chain) = snp();
    let e = verify_snp_report(&r, &vcek, Some(&chain), 4_102_444_800 * 2).expect_err("expired");
    assert!(matches!(e, VerifyError::CollateralExpired { .. }), "{e}");
}

#[test]
fn debug_enclaves_are_refused_by_the_verifier_and_by_the_appraisal() {
    // SGX ATTRIBUTES.DEBUG is bit 1 of the report body's attributes (body offset 48): the
    // signature no longer verifies.
    let (q, c) = dcap("sgx_quote");
    let mut bad = q.clone();
    bad[48 + 48] |= 0x02;
    assert!(verify_dcap_quote(&bad, &c, SGX_AT).is_err());
    // At appraisal level, on parsed evidence with the flag set.
    let mut ev = verify_dcap_quote(&q, &c, SGX_AT).unwrap();
    ev.debug = true;
    let p = policy(&format!(
        r#"{{"policy_id": "p", "require_binding": false,
            "tcb_status_allow": ["ConfigurationAndSWHardeningNeeded"],
            "sgx": {{"mrenclave": ["{SGX_MRENCLAVE}"]}}}}"#
    ));
    let a = appraise(&ev, &p, Binding::NotChecked, SGX_AT);
    assert_eq!(reasons(&a), [Reason::DebugEnclave]);
    let mut allow = p;
    allow.allow_debug = true;
    assert!(appraise(&ev, &allow, Binding::NotChecked, SGX_AT).accepted);
    // SEV-SNP policy bit 19.
    let snp_ev = VerifiedEvidence::dangerous_unverified(
        Measurements::SevSnp {
            measurement: SNP_MEASUREMENT.into(),
            policy: 0x30000 | (1 << 19),
            vmpl: 2,
            guest_svn: 0,
            reported_tcb: SnpTcb::default(),
            host_data: "00".repeat(32),
        },
        [0; 64],
        true,
        SGX_AT,
    );
    let p = policy(&format!(
        r#"{{"policy_id": "p", "require_binding": false, "sev_snp": {{"measurement": ["{SNP_MEASUREMENT}"], "allow_smt": true}}}}"#
    ));
    let a = appraise(&snp_ev, &p, Binding::NotChecked, SGX_AT);
    assert_eq!(
        reasons(&a),
        [
            Reason::DebugEnclave,
            Reason::VmplTooHigh { vmpl: 2, max: 0 }
        ]
    );
}

#[test]
fn the_binding_holds_once_and_a_reused_or_unknown_nonce_is_refused() {
    let mut reg = NonceRegistry::new(60, 4);
    let nonce = reg.issue([9; 32], 1000).unwrap();
    let key = WorkerPublicKey([5; 32]);
    let ev = VerifiedEvidence::dangerous_unverified(
        Measurements::InsecureSimulated {
            measurement: "dev".into(),
        },
        expected_report_data(&nonce, &key),
        false,
        1000,
    );
    let p = policy(r#"{"policy_id": "dev", "insecure_simulated_tee": {}}"#);
    let bind = |reg: &mut NonceRegistry, at| {
        appraise(
            &ev,
            &p,
            Binding::Fresh {
                registry: reg,
                nonce,
                worker_key: key,
            },
            at,
        )
    };
    let a = bind(&mut reg, 1010);
    assert!(a.accepted, "{:?}", a.reasons);
    assert_eq!(a.binding, BindingKind::FreshNonce);
    let a = bind(&mut reg, 1011);
    assert_eq!(
        reasons(&a),
        [Reason::Nonce {
            error: NonceError::Reused
        }]
    );
    // Expired nonce, and a report that binds another key.
    let late = reg.issue([8; 32], 1000).unwrap();
    assert_eq!(reg.redeem(&late, 1061), Err(NonceError::Expired));
    assert_eq!(reg.redeem(&Nonce([1; 32]), 1000), Err(NonceError::Unknown));
    let n2 = reg.issue([7; 32], 1000).unwrap();
    let a = appraise(
        &ev,
        &p,
        Binding::Fresh {
            registry: &mut reg,
            nonce: n2,
            worker_key: WorkerPublicKey([6; 32]),
        },
        1001,
    );
    assert_eq!(reasons(&a), [Reason::ReportDataMismatch]);
    // Bounded: capacity 4 (three remembered) → one more, then full until they expire.
    reg.issue([6; 32], 1000).unwrap();
    assert_eq!(reg.issue([5; 32], 1000), Err(NonceError::Full));
    assert!(reg.issue([5; 32], 2000).is_ok());
}

#[test]
fn the_real_samples_fail_the_binding_as_their_report_data_is_hello_world() {
    let (q, c) = dcap("sgx_quote");
    let ev = verify_dcap_quote(&q, &c, SGX_AT).unwrap();
    let mut reg = NonceRegistry::new(60, 4);
    let nonce = reg.issue([3; 32], SGX_AT).unwrap();
    let a = appraise(
        &ev,
        &strict_policy(),
        Binding::Fresh {
            registry: &mut reg,
            nonce,
            worker_key: WorkerPublicKey([4; 32]),
        },
        SGX_AT,
    );
    assert!(a.reasons.contains(&Reason::ReportDataMismatch));
    assert!(!a.reasons.contains(&Reason::BindingNotChecked));
}

#[test]
fn simulated_evidence_is_refused_by_a_real_hardware_policy() {
    let ev = insecure_simulated_evidence(
        br#"{"insecure_simulated_tee": true, "measurement": "dev-build"}"#,
        10,
    )
    .unwrap();
    assert_eq!(ev.kind, TeeKind::InsecureSimulated);
    let a = appraise(&ev, &strict_policy(), Binding::NotChecked, 10);
    assert_eq!(
        reasons(&a),
        [Reason::InsecureSimulatedTee, Reason::BindingNotChecked]
    );
    assert!(a.insecure_simulated_tee);
    assert!(insecure_simulated_evidence(br#"{"measurement": "x"}"#, 10).is_err());
}

#[test]
fn bad_bytes_give_errors_not_panics() {
    let (q, c) = dcap("sgx_quote");
    for len in [0, 1, 47, 48, 100, 436, 1000, q.len() - 1] {
        assert!(verify_dcap_quote(&q[..len], &c, SGX_AT).is_err(), "{len}");
    }
    assert!(verify_dcap_quote(&q, b"{}", SGX_AT).is_err());
    assert!(verify_dcap_quote(&q, b"\xff\xfe", SGX_AT).is_err());
    assert!(verify_dcap_quote(&vec![0u8; MAX_QUOTE_BYTES + 1], &c, SGX_AT).is_err());
    let (r, vcek, chain) = snp();
    assert!(verify_snp_report(&r[..100], &vcek, None, SGX_AT).is_err());
    assert!(verify_snp_report(b"zz", &vcek, None, SGX_AT).is_err());
    assert!(verify_snp_report(&r, &vcek[..50], None, SGX_AT).is_err());
    assert!(verify_snp_report(&r, &vcek, Some(b"junk"), SGX_AT).is_err());
    // A chain whose ARK is not a built-in root: the ASK twice.
    let text = String::from_utf8(chain.clone()).unwrap();
    let ask = &text[..text.find("-----END CERTIFICATE-----").unwrap() + 25];
    let forged = format!("{ask}\n{ask}\n");
    assert_eq!(
        verify_snp_report(&r, &vcek, Some(forged.as_bytes()), SGX_AT).unwrap_err(),
        VerifyError::UnknownRoot
    );
    for bad in [
        r#"{"policy_id": "p", "sgx": {}}"#,
        r#"{"policy_id": "p", "tdx": {"mrtd": ["00"]}}"#,
        r#"{"policy_id": "p", "tcb_status_allow": ["Fine"]}"#,
        r#"{"policy_id": "p", "unknown": 1}"#,
        r#"{"policy_id": ""}"#,
    ] {
        assert!(AppraisalPolicy::from_json(bad.as_bytes()).is_err(), "{bad}");
    }
}

// ---- Attestation results ----

fn fresh_result(
    signer: &ResultSigner,
    measurement: &str,
    kind_policy: &str,
    at: u64,
) -> (String, EnclaveKeyPair) {
    let enclave = EnclaveKeyPair::derive(&[42; 32]);
    let mut reg = NonceRegistry::new(60, 8);
    let nonce = reg.issue([1; 32], at).expect("nonce");
    let ev = VerifiedEvidence::dangerous_unverified(
        Measurements::InsecureSimulated {
            measurement: measurement.into(),
        },
        expected_report_data(&nonce, &enclave.public()),
        false,
        at,
    );
    let p = policy(kind_policy);
    let a = appraise(
        &ev,
        &p,
        Binding::Fresh {
            registry: &mut reg,
            nonce,
            worker_key: enclave.public(),
        },
        at,
    );
    let token = signer
        .sign(&EarClaims::of(&a, p.result_ttl_secs))
        .expect("sign");
    (token, enclave)
}

#[test]
fn results_verify_until_they_expire_and_not_under_another_key() {
    let signer = ResultSigner::from_seed([7; 32]);
    let (token, _) = fresh_result(
        &signer,
        "m1",
        r#"{"policy_id": "dev", "result_ttl_secs": 100, "insecure_simulated_tee": {}}"#,
        1000,
    );
    let claims = verify_result(&token, &signer.verifying_key(), 1050).unwrap();
    assert_eq!(claims.eat_profile, EAT_PROFILE);
    let sub = claims.appraisal().unwrap();
    assert_eq!(sub.status, EarStatus::Warning); // simulated: always a warning at best
    assert!(sub.insecure_simulated_tee);
    assert_eq!(sub.policy_id, "dev");
    assert!(matches!(
        verify_result(&token, &signer.verifying_key(), 1100),
        Err(ResultError::Expired { .. })
    ));
    let other = ResultSigner::from_seed([8; 32]);
    assert_eq!(
        verify_result(&token, &other.verifying_key(), 1050),
        Err(ResultError::BadSignature)
    );
    let mut tampered = token.clone().into_bytes();
    let mid = token.find('.').unwrap() + 5;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    assert!(
        verify_result(
            std::str::from_utf8(&tampered).unwrap(),
            &signer.verifying_key(),
            1050
        )
        .is_err()
    );
    assert!(format!("{signer:?}").starts_with("ResultSigner(public "));
}

// ---- Sealing and the key broker ----

#[test]
fn sealed_datasets_open_only_with_their_key_id_and_version() {
    let key = DatasetKey::from_bytes([1; 32]);
    for len in [0usize, 1, 1023, 1024, 1025, 5000] {
        let pt: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut sealed = Vec::new();
        seal_stream_chunked(&key, "ds", 3, &mut &pt[..], &mut sealed, [2; 32], 10).unwrap();
        let mut out = Vec::new();
        open_stream(&key, "ds", 3, &mut &sealed[..], &mut out).unwrap();
        assert_eq!(out, pt, "{len}");
        assert!(open(&key, "ds", 4, &sealed).is_err());
        assert!(open(&key, "other", 3, &sealed).is_err());
        assert!(open(&DatasetKey::from_bytes([9; 32]), "ds", 3, &sealed).is_err());
        if len > 1024 {
            // Truncation at a chunk boundary: the remaining last chunk is not flagged last.
            let cut = 30 + 1024 + 16;
            assert!(open(&key, "ds", 3, &sealed[..cut]).is_err(), "{len}");
        }
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(open(&key, "ds", 3, &flipped).is_err());
    }
    let sealed = seal(&key, "ds", 1, b"hello", [3; 32]).unwrap();
    assert_eq!(open(&key, "ds", 1, &sealed).unwrap(), b"hello");
    assert!(open(&key, "ds", 1, b"TSEAL").is_err());
    assert_eq!(format!("{key:?}"), "DatasetKey(..)");
}

fn ticket(valid: bool) -> TicketCheck {
    TicketCheck {
        job_id: "job-1".into(),
        worker_id: "w-1".into(),
        valid,
    }
}

#[test]
fn the_broker_releases_to_a_fresh_attested_worker_who_can_open_the_data() {
    let signer = ResultSigner::from_seed([7; 32]);
    let mut broker = KeyBroker::new(signer.verifying_key(), [11; 32]);
    let sealed = {
        let k = broker.generate_key("ds-1").unwrap();
        seal(k, "ds-1", 1, b"secret rows", [12; 32]).unwrap()
    };
    let (token, enclave) = fresh_result(
        &signer,
        "dev-build",
        r#"{"policy_id": "dev", "insecure_simulated_tee": {}}"#,
        1000,
    );
    let req = HardwareRequirement::from_env_hard(&[
        "x86".into(),
        "tee:insecure-simulated-tee:measurement=dev-build".into(),
    ])
    .unwrap();
    let t = ticket(true);
    let rr = ReleaseRequest {
        dataset_id: "ds-1",
        attestation_result: &token,
        requirement: &req,
        ticket: &t,
    };
    let (res, audit) = broker.release(&rr, 1001);
    // A simulated result is at best a warning; the development switch: a licence that names
    // the simulated mode (and its measurement) accepts that warning, and only for that kind.
    let released = res.expect("released to the simulated enclave the licence names");
    assert_eq!(audit.action, "tee.key.release");
    assert_eq!(audit.tee_kind, Some(TeeKind::InsecureSimulated));
    let key = enclave.open_released(&released).unwrap();
    assert_eq!(open(&key, "ds-1", 1, &sealed).unwrap(), b"secret rows");
    // The same result under a licence naming another simulated measurement, or real
    // hardware: refused, with the status not excused for the real-hardware licence.
    for (env_hard, want) in [
        (
            "tee:insecure-simulated-tee:measurement=other-build",
            RefusalReason::MeasurementNotRequired {
                field: "measurement".into(),
                value: "dev-build".into(),
            },
        ),
        ("tee:sgx", RefusalReason::InsecureSimulatedTee),
    ] {
        let req = HardwareRequirement::from_env_hard(&[env_hard.into()]).unwrap();
        let rr = ReleaseRequest {
            dataset_id: "ds-1",
            attestation_result: &token,
            requirement: &req,
            ticket: &t,
        };
        let (res, audit) = broker.release(&rr, 1001);
        let reasons = res.unwrap_err();
        assert!(reasons.contains(&want), "{env_hard}: {reasons:?}");
        if env_hard == "tee:sgx" {
            assert!(reasons.contains(&RefusalReason::NotAffirming {
                status: EarStatus::Warning
            }));
        }
        assert_eq!(audit.action, "tee.key.refuse");
    }

    // An affirming result (the appraisal of a real TEE, here made directly).
    let token = affirming_sgx_result(&signer, &enclave, 1000, 300);
    let req = HardwareRequirement::from_env_hard(&[format!("tee:sgx:mrenclave={SGX_MRENCLAVE}")])
        .unwrap();
    let rr = ReleaseRequest {
        dataset_id: "ds-1",
        attestation_result: &token,
        requirement: &req,
        ticket: &t,
    };
    let (res, audit) = broker.release(&rr, 1001);
    let released = res.expect("released");
    assert_eq!(audit.action, "tee.key.release");
    assert!(audit.reasons.is_empty());
    assert_eq!(audit.tee_kind, Some(TeeKind::Sgx));
    assert_eq!(audit.worker_public_key, Some(enclave.public().to_hex()));
    let key = enclave.open_released(&released).unwrap();
    assert_eq!(open(&key, "ds-1", 1, &sealed).unwrap(), b"secret rows");
    // Another enclave cannot open it.
    assert!(
        EnclaveKeyPair::derive(&[43; 32])
            .open_released(&released)
            .is_err()
    );
}

/// An SGX appraisal of the real sample with its status allowed and a fresh binding made
/// possible by swapping in the right report data (the sample's own is "Hello, world!").
fn affirming_sgx_result(
    signer: &ResultSigner,
    enclave: &EnclaveKeyPair,
    at: u64,
    ttl: u64,
) -> String {
    let mut reg = NonceRegistry::new(60, 8);
    let nonce = reg.issue([2; 32], at).expect("nonce");
    let ev = VerifiedEvidence::dangerous_unverified(
        Measurements::Sgx {
            mrenclave: SGX_MRENCLAVE.into(),
            mrsigner: "00".repeat(32),
            isv_prod_id: 0,
            isv_svn: 0,
        },
        expected_report_data(&nonce, &enclave.public()),
        false,
        at,
    );
    // `dangerous_unverified` carries no DCAP verdict: appraise, then check the only reason
    // is that one, and sign an affirming result for the broker tests.
    let p = strict_policy();
    let a = appraise(
        &ev,
        &p,
        Binding::Fresh {
            registry: &mut reg,
            nonce,
            worker_key: enclave.public(),
        },
        at,
    );
    assert!(matches!(a.reasons[..], [Reason::DcapPolicy { .. }]));
    let mut a = a;
    a.reasons.clear();
    a.accepted = true;
    signer.sign(&EarClaims::of(&a, ttl)).expect("sign")
}

#[test]
fn the_broker_never_releases_for_a_failed_appraisal_expired_result_wrong_kind_or_measurement() {
    let signer = ResultSigner::from_seed([7; 32]);
    let mut broker = KeyBroker::new(signer.verifying_key(), [11; 32]);
    broker.generate_key("ds-1").unwrap();
    let enclave = EnclaveKeyPair::derive(&[42; 32]);
    let good = affirming_sgx_result(&signer, &enclave, 1000, 300);
    let sgx_req =
        HardwareRequirement::from_env_hard(&[format!("tee:sgx:mrenclave={SGX_MRENCLAVE}")])
            .unwrap();
    let t = ticket(true);
    let ask =
        |broker: &mut KeyBroker, token: &str, req: &HardwareRequirement, t: &TicketCheck, at| {
            let (res, audit) = broker.release(
                &ReleaseRequest {
                    dataset_id: "ds-1",
                    attestation_result: token,
                    requirement: req,
                    ticket: t,
                },
                at,
            );
            if res.is_err() {
                assert_eq!(audit.action, "tee.key.refuse");
                assert!(!audit.reasons.is_empty());
            }
            res
        };
    // Failed appraisal: the real SGX sample under the strict policy (contraindicated).
    let (q, c) = dcap("sgx_quote");
    let ev = verify_dcap_quote(&q, &c, SGX_AT).unwrap();
    let a = appraise(&ev, &strict_policy(), Binding::NotChecked, SGX_AT);
    let bad = signer.sign(&EarClaims::of(&a, 300)).unwrap();
    let r = ask(&mut broker, &bad, &sgx_req, &t, SGX_AT + 1).unwrap_err();
    assert!(r.contains(&RefusalReason::NotAffirming {
        status: EarStatus::Contraindicated
    }));
    assert!(r.contains(&RefusalReason::BindingNotFresh));
    // Expired result.
    let r = ask(&mut broker, &good, &sgx_req, &t, 1300).unwrap_err();
    assert_eq!(r, [RefusalReason::ResultExpired]);
    // Wrong kind: the licence asks for TDX.
    let tdx_req = HardwareRequirement::from_env_hard(&["tee:tdx".into()]).unwrap();
    let r = ask(&mut broker, &good, &tdx_req, &t, 1001).unwrap_err();
    assert_eq!(r, [RefusalReason::KindNotRequired { kind: TeeKind::Sgx }]);
    // Simulated when real hardware is required.
    let (sim, _) = fresh_result(
        &signer,
        "dev",
        r#"{"policy_id": "dev", "insecure_simulated_tee": {}}"#,
        1000,
    );
    let r = ask(&mut broker, &sim, &sgx_req, &t, 1001).unwrap_err();
    assert!(r.contains(&RefusalReason::InsecureSimulatedTee), "{r:?}");
    // Wrong measurement.
    let other_req =
        HardwareRequirement::from_env_hard(&[format!("tee:sgx:mrenclave={}", "ab".repeat(32))])
            .unwrap();
    let r = ask(&mut broker, &good, &other_req, &t, 1001).unwrap_err();
    assert_eq!(
        r,
        [RefusalReason::MeasurementNotRequired {
            field: "mrenclave".into(),
            value: SGX_MRENCLAVE.into()
        }]
    );
    // Invalid ticket, unknown dataset, a result signed by someone else, no TEE named.
    let r = ask(&mut broker, &good, &sgx_req, &ticket(false), 1001).unwrap_err();
    assert_eq!(r, [RefusalReason::TicketInvalid]);
    let forger = ResultSigner::from_seed([9; 32]);
    let forged = affirming_sgx_result(&forger, &enclave, 1000, 300);
    let r = ask(&mut broker, &forged, &sgx_req, &t, 1001).unwrap_err();
    assert!(matches!(r[..], [RefusalReason::ResultInvalid { .. }]));
    let none = HardwareRequirement::from_env_hard(&["x86".into()]).unwrap();
    let r = ask(&mut broker, &good, &none, &t, 1001).unwrap_err();
    assert_eq!(r, [RefusalReason::NoTeeRequirement]);
    let (res, _) = broker.release(
        &ReleaseRequest {
            dataset_id: "nope",
            attestation_result: &good,
            requirement: &sgx_req,
            ticket: &t,
        },
        1001,
    );
    assert_eq!(res.unwrap_err(), [RefusalReason::UnknownDataset]);
    // And the good one does release.
    assert!(ask(&mut broker, &good, &sgx_req, &t, 1001).is_ok());
    assert!(HardwareRequirement::from_env_hard(&["tee:sgx:mrtd=00".into()]).is_err());
    assert!(HardwareRequirement::from_env_hard(&["tee:nitro".into()]).is_err());
}

#[test]
fn dataset_keys_survive_wrapping_under_the_master_key_only() {
    let signer = ResultSigner::from_seed([7; 32]);
    let mut a = KeyBroker::new(signer.verifying_key(), [1; 32]);
    let k = a.generate_key("ds").unwrap().clone();
    let master = MasterKey::from_bytes([5; 32]);
    let w = a.wrap_for_storage(&master, "ds").unwrap();
    let mut b = KeyBroker::new(signer.verifying_key(), [2; 32]);
    assert!(
        b.insert_wrapped(&MasterKey::from_bytes([6; 32]), &w)
            .is_err()
    );
    let mut renamed = w.clone();
    renamed.dataset_id = "other".into();
    assert!(b.insert_wrapped(&master, &renamed).is_err());
    b.insert_wrapped(&master, &w).unwrap();
    assert_eq!(b.key("ds").unwrap().expose_bytes(), k.expose_bytes());
    assert_eq!(format!("{master:?}"), "MasterKey(..)");
    assert!(!format!("{b:?}").contains(&hex::encode(k.expose_bytes())));
}

#[test]
fn times_parse_as_unix_seconds_or_rfc3339() {
    assert_eq!(parse_time("1750334171"), Ok(1_750_334_171));
    assert_eq!(parse_time("2025-06-19T11:56:11Z"), Ok(1_750_334_171));
    assert!(parse_time("yesterday").is_err());
    assert!(parse_time("").is_err());
}

/// The package directory at run time (cargo sets it for every test it runs), so that a test
/// binary built in another checkout of the same target directory reads this checkout's files;
/// the build-time path otherwise.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
}
