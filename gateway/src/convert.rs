//! Domain records → wire messages (and the few wire shapes → domain requests that need no
//! service). Conversions that can fail return a status instead of a default.

use tessera_core::JobState;
use tessera_proto::v1 as pb;
use tessera_scheduler::{
    AccountStatus, Amounts, BillLineRecord, BillRecord, DatasetRecord, JobView, LicenceRecord,
    Split, StatementRecord, SubscriptionView, TransferRecord, UsageEventRecord,
};
use tonic::Status;

use crate::error::{internal, refusal_code};

/// Converts a job view to its wire form.
pub fn job_to_pb(v: &JobView) -> pb::Job {
    let j = &v.job;
    // An fl job runs no PSI: no mode, protocol or key counts of one.
    let fl = j.scene == tessera_core::job::scene::FL;
    pb::Job {
        job_id: j.job_id.clone(),
        state: pb::JobState::from(j.state).into(),
        licence_id: j.licence_id.clone(),
        scene: j.scene.clone(),
        mode: if fl {
            pb::PsiMode::Unspecified.into()
        } else {
            pb::PsiMode::from(j.mode).into()
        },
        protocol: if fl {
            pb::PsiProtocol::Unspecified.into()
        } else {
            pb::PsiProtocol::from(j.protocol).into()
        },
        mpc_triples: j
            .mpc_triples
            .map_or(pb::MpcTriples::Unspecified, pb::MpcTriples::from)
            .into(),
        co_licences: j.co_licences.iter().map(|c| c.licence_id.clone()).collect(),
        user: j.user.clone(),
        refusal_reasons: if j.state == JobState::Refused {
            j.reasons.clone()
        } else {
            Vec::new()
        },
        refusals: v
            .refusals
            .iter()
            .map(|r| pb::RefusalReason {
                code: refusal_code(r).envelope_code().into(),
                message: r.to_string(),
            })
            .collect(),
        error: j.error.clone(),
        result_size: j.result_size,
        result_location: j.result_location.clone(),
        progress: v
            .progress
            .iter()
            .map(|p| pb::PhaseProgress {
                party: p.party.clone(),
                role: pb::TaskRole::from(p.role).into(),
                phase: p.phase.clone(),
                done: p.done,
                total: p.total,
                eta_ms: p.eta_ms,
            })
            .collect(),
        charge_micros: j.charge_micros,
        created_at_ms: j.created_at_ms,
        finished_at_ms: j.finished_at_ms,
        delivered_at_ms: j.delivered_at_ms,
        request_id: j.request_id.clone().unwrap_or_default(),
        result_file: j.result_file.as_ref().map(result_file),
        provider_result_file: j.provider_result_file.as_ref().map(result_file),
        buyer_empty_keys: j.buyer_empty_keys.filter(|_| !fl),
        provider_empty_keys: j.provider_empty_keys.filter(|_| !fl),
        error_kind: j
            .failure
            .as_ref()
            .map(|o| o.kind.clone())
            .unwrap_or_default(),
        // Set by the RPC from the audit service (see `jobs`).
        audit_head: None,
    }
}

pub(crate) fn dataset_to_pb(d: DatasetRecord) -> pb::Dataset {
    pb::Dataset {
        dataset_id: d.dataset_id,
        owner_party: d.owner_party,
        location: d.location,
        description: d.description,
        declared_rows: d.declared_rows,
    }
}

pub(crate) fn licence_to_pb(l: &LicenceRecord) -> Result<pb::Licence, Status> {
    let policy_json = serde_json::to_string(&l.policy)
        .map_err(|e| internal(format!("licence {} policy: {e}", l.licence_id)))?;
    Ok(pb::Licence {
        licence_id: l.licence_id.clone(),
        licensor: l.licensor.clone(),
        licensee: l.licensee.clone(),
        dataset_id: l.dataset_id.clone(),
        policy_json,
        price_per_job_micros: l.price.per_job_micros,
        price_per_1k_rows_micros: l.price.per_1k_rows_micros,
        operator_share_bps: l.price.operator_share_bps,
        monthly_price_micros: l.monthly_price_micros,
        withdrawn: String::new(),
    })
}

pub(crate) fn usage_to_pb(e: UsageEventRecord) -> Result<pb::UsageEvent, Status> {
    let quantity = u64::try_from(e.quantity).map_err(|_| {
        internal(format!(
            "usage event {} has a negative quantity {}",
            e.event_id, e.quantity
        ))
    })?;
    Ok(pb::UsageEvent {
        event_id: e.event_id,
        job_id: e.job_id,
        party: e.party,
        metric: e.metric,
        quantity,
        protocol: e.protocol,
    })
}

pub(crate) fn transfer_to_pb(t: TransferRecord) -> pb::Transfer {
    pb::Transfer {
        transfer_id: t.spec.id,
        debit_account: t.spec.debit,
        credit_account: t.spec.credit,
        amount_micros: t.spec.amount_micros,
        job_id: t.spec.job_id.unwrap_or_default(),
        memo: t.spec.memo,
        kind: t.kind,
        pending_id: t.pending_id.unwrap_or_default(),
        created_at_ms: t.created_at_ms,
    }
}

fn result_file(f: &tessera_scheduler::ResultFileRecord) -> pb::ResultFile {
    pb::ResultFile {
        name: f.name.clone(),
        bytes: f.bytes,
        rows: f.rows,
        sha256_hex: f.sha256_hex.clone(),
    }
}

fn amounts_to_pb(a: &Amounts, s: &Split) -> pb::LineAmounts {
    pb::LineAmounts {
        original_micros: a.original,
        platform_discount_micros: a.platform_discount,
        customer_discount_micros: a.customer_discount,
        coupon_micros: a.coupon,
        deduction_voucher_micros: a.deduction_voucher,
        recharge_voucher_micros: a.recharge_voucher,
        cash_micros: a.cash,
        credit_micros: a.credit,
        arrears_micros: a.arrears,
        provider_micros: s.provider_micros,
        operator_micros: s.operator_micros,
    }
}

pub(crate) fn bill_to_pb(b: BillRecord) -> pb::Bill {
    pb::Bill {
        bill_id: b.bill_id,
        customer: b.customer,
        period: b.period,
        state: b.state,
        lines: b.lines,
        totals: Some(amounts_to_pb(&b.totals, &b.split)),
        closed_at_ms: b.closed_at_ms,
    }
}

pub(crate) fn line_to_pb(l: BillLineRecord) -> pb::BillLine {
    pb::BillLine {
        line_id: l.line.line_id,
        bill_id: l.bill_id,
        customer: l.line.customer,
        job_id: l.line.job_id.unwrap_or_default(),
        kind: l.line.kind.name().to_string(),
        product: l.line.product,
        provider: l.line.provider,
        event_time_ms: l.line.event_time_ms,
        arrival_time_ms: l.arrival_time_ms,
        service_start_ms: l.line.service_start_ms,
        service_end_ms: l.line.service_end_ms,
        amounts: Some(amounts_to_pb(&l.line.amounts, &l.line.split)),
        corrects_period: l.corrects_period.unwrap_or_default(),
        note: l.line.note,
    }
}

pub(crate) fn statement_to_pb(s: StatementRecord) -> pb::Statement {
    pb::Statement {
        provider: s.provider,
        period: s.period,
        lines: s.lines,
        paid_micros: s.paid_micros,
        operator_micros: s.operator_micros,
        provider_micros: s.provider_micros,
        paid_out_at_ms: s.paid_out_at_ms,
        payout_transfer_id: s.payout_transfer_id.unwrap_or_default(),
        audit_head: None,
    }
}

pub(crate) fn subscription_to_pb(v: SubscriptionView) -> pb::SubscriptionView {
    pb::SubscriptionView {
        licence_id: v.licence_id,
        customer: v.customer,
        status: v.status,
        start_ms: v.start_ms,
        end_ms: v.end_ms,
        months_total: v.months_total,
        charged_micros: v.charged_micros,
        refund_micros: v.refund_micros,
        audit_head: None,
    }
}

pub(crate) fn account_status_to_pb(s: AccountStatus) -> pb::AccountStatus {
    pb::AccountStatus {
        customer: s.customer,
        product: s.product,
        cash_micros: s.cash_micros,
        frozen: s.frozen,
        reason: s.reason,
        manual: s.manual,
    }
}

/// An optional text filter: empty means "all".
pub(crate) fn optional_filter(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}
