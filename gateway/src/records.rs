//! Dataset and licence RPCs over the scheduler's record service.

use tessera_accounting::JobPrice;
use tessera_proto::v1 as pb;
use tessera_scheduler::RecordService;
use tessera_scheduler::records::{NewDataset, NewLicence};
use tonic::Status;

use crate::convert::{dataset_to_pb, licence_to_pb};
use crate::error::status;

pub(crate) async fn create_dataset(
    s: &RecordService,
    r: pb::CreateDatasetRequest,
) -> Result<pb::Dataset, Status> {
    let d = s
        .create_dataset(NewDataset {
            dataset_id: r.dataset_id,
            owner_party: r.owner_party,
            location: r.location,
            description: r.description,
            declared_rows: r.declared_rows,
        })
        .await
        .map_err(|e| status(&e))?;
    Ok(dataset_to_pb(d))
}

pub(crate) async fn create_licence(
    s: &RecordService,
    r: pb::CreateLicenceRequest,
) -> Result<pb::Licence, Status> {
    let l = s
        .create_licence(NewLicence {
            licensor: r.licensor,
            licensee: r.licensee,
            dataset_id: r.dataset_id,
            policy_json: r.policy_json,
            price: JobPrice {
                per_job_micros: r.price_per_job_micros,
                per_1k_rows_micros: r.price_per_1k_rows_micros,
                operator_share_bps: r.operator_share_bps,
            },
            monthly_price_micros: r.monthly_price_micros,
        })
        .await
        .map_err(|e| status(&e))?;
    with_withdrawal(s, licence_to_pb(&l)?).await
}

/// `l` with why it was withdrawn, if it was.
pub(crate) async fn with_withdrawal(
    s: &RecordService,
    mut l: pb::Licence,
) -> Result<pb::Licence, Status> {
    l.withdrawn = s
        .withdrawn(&l.licence_id)
        .await
        .map_err(|e| status(&e))?
        .unwrap_or_default();
    Ok(l)
}

pub(crate) async fn get_licence(
    s: &RecordService,
    r: pb::LicenceRef,
) -> Result<pb::Licence, Status> {
    let l = s.licence(&r.licence_id).await.map_err(|e| status(&e))?;
    with_withdrawal(s, licence_to_pb(&l)?).await
}
