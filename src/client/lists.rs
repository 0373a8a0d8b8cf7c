//! Listing commands: `job list`, `dataset list`, `licence list`, `worker list`. Each asks the
//! operator for one bounded page (`--page-size`, at most 1000; `--page-token` for the next,
//! or `--all` for every page), prints a table or CSV through [`Out`] (a closed pipe ends the
//! command quietly), and shows times as RFC 3339 dates in the operator's zone.

use clap::Args;
use tessera_core::civil::Zone;
use tessera_proto::v1 as pb;

use super::conn::Conn;
use super::output::{Listing, Out, fmt_micros};

/// Most pages `--all` follows (with at most 1000 rows each).
const PAGES_MAX: usize = 10_000;

/// Which page, and how to print it: shared by every list command.
#[derive(Debug, Args)]
pub struct PageArgs {
    /// Rows per page (1 ..= 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: u32,
    /// Start at this page (the token a previous listing printed on stderr).
    #[arg(long, default_value = "")]
    pub page_token: String,
    /// Follow every page to the end instead of printing one.
    #[arg(long)]
    pub all: bool,
    /// Print CSV (RFC 4180) instead of a table.
    #[arg(long)]
    pub csv: bool,
}

impl PageArgs {
    fn query(&self, token: &str) -> Option<pb::PageQuery> {
        Some(pb::PageQuery {
            page_size: self.page_size,
            page_token: token.to_string(),
        })
    }
}

/// The operator's calendar zone, for showing times.
///
/// Errors: the call fails, or the operator names a zone this build does not know.
pub async fn zone(c: &mut super::conn::Client) -> anyhow::Result<Zone> {
    let info = c.get_operator_info(pb::ListRequest {}).await?.into_inner();
    Zone::parse(&info.time_zone)
        .map_err(|e| anyhow::anyhow!("the operator's time zone {:?}: {e}", info.time_zone))
}

/// An optional instant as an RFC 3339 date in `zone` (empty when unset).
pub fn date(zone: &Zone, ms: Option<i64>) -> String {
    ms.map(|m| zone.format_rfc3339(m)).unwrap_or_default()
}

/// Fetches pages (one, or all with `--all`) and prints them as one listing; prints the next
/// page's token on stderr when a page was left.
async fn print_pages<F, Fut>(
    args: &PageArgs,
    mut listing: Listing,
    mut fetch: F,
) -> anyhow::Result<()>
where
    F: FnMut(Option<pb::PageQuery>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Vec<Vec<String>>, String)>>,
{
    let mut token = args.page_token.clone();
    for _ in 0..PAGES_MAX {
        let (rows, next) = fetch(args.query(&token)).await?;
        for r in rows {
            listing.push(r);
        }
        token = next;
        if token.is_empty() || !args.all {
            break;
        }
    }
    Out::stdout().listing(&listing, args.csv)?;
    if !token.is_empty() {
        eprintln!("more rows: repeat with --page-token {token} (or --all)");
    }
    Ok(())
}

/// `tessera job list` filters.
#[derive(Debug, Args)]
pub struct JobListArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Only jobs submitted by this user. Whatever the filter, a caller lists only the jobs it
    /// may see (its own, and its parties' as provider; every job for the operator), each as
    /// it may see it.
    #[arg(long, default_value = "")]
    pub user: String,
    /// Only jobs in this state: admitted | running | succeeded | failed | refused | cancelled.
    #[arg(long, value_parser = parse_state)]
    pub state: Option<tessera_core::JobState>,
    /// Only jobs run under this licence.
    #[arg(long, default_value = "")]
    pub licence: String,
    #[command(flatten)]
    pub page: PageArgs,
}

fn parse_state(s: &str) -> Result<tessera_core::JobState, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// The jobs' progress as `party phase done/total`, joined.
fn progress_text(j: &pb::Job) -> String {
    j.progress
        .iter()
        .map(|p| format!("{} {} {}/{}", p.party, p.phase, p.done, p.total))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Prints a page (or every page) of jobs.
pub async fn jobs(a: JobListArgs) -> anyhow::Result<()> {
    let mut c = a.conn.connect().await?;
    let zone = zone(&mut c).await?;
    let state = a
        .state
        .map_or(pb::JobState::Unspecified, pb::JobState::from);
    let listing = Listing::new(vec![
        "job",
        "state",
        "user",
        "licence",
        "scene",
        "mode",
        "protocol",
        "created",
        "finished",
        "result_size",
        "charge",
        "progress",
        "error",
    ])
    .align_right(&[9, 10]);
    print_pages(&a.page, listing, |page| {
        let mut c = c.clone();
        let q = pb::JobQuery {
            page,
            user: a.user.clone(),
            state: state.into(),
            licence_id: a.licence.clone(),
        };
        let zone = zone.clone();
        async move {
            let l = c.list_jobs(q).await?.into_inner();
            let rows = l
                .jobs
                .iter()
                .map(|j| {
                    // A preview has no PSI mode or protocol, and a tee job matches its rows
                    // inside the enclave.
                    let psi = !matches!(
                        j.scene.as_str(),
                        tessera_core::job::scene::PREVIEW | tessera_core::job::scene::TEE
                    );
                    vec![
                        j.job_id.clone(),
                        j.state_text().to_string(),
                        j.user.clone(),
                        j.licence_id.clone(),
                        j.scene.clone(),
                        if psi {
                            j.mode_text().to_string()
                        } else {
                            String::new()
                        },
                        if j.protocol == 0 || !psi {
                            String::new()
                        } else {
                            j.protocol_text().to_string()
                        },
                        date(&zone, Some(j.created_at_ms)),
                        date(&zone, j.finished_at_ms),
                        j.result_size.map(|n| n.to_string()).unwrap_or_default(),
                        // Only the job's buyer sees its charge (redacted to 0 for anyone else):
                        // a zero charge is blank, not a misleading 0.
                        if j.charge_micros != 0 {
                            fmt_micros(j.charge_micros)
                        } else {
                            String::new()
                        },
                        progress_text(j),
                        if j.refusal_reasons.is_empty() {
                            j.error.clone()
                        } else {
                            j.refusal_reasons.join("; ")
                        },
                    ]
                })
                .collect();
            Ok((rows, l.next_page_token))
        }
    })
    .await
}

/// `tessera dataset list` filters.
#[derive(Debug, Args)]
pub struct DatasetListArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Only datasets owned by this party.
    #[arg(long, default_value = "")]
    pub party: String,
    #[command(flatten)]
    pub page: PageArgs,
}

/// Prints a page (or every page) of datasets.
pub async fn datasets(a: DatasetListArgs) -> anyhow::Result<()> {
    let c = a.conn.connect().await?;
    let listing =
        Listing::new(vec!["dataset", "party", "location", "rows", "description"]).align_right(&[3]);
    print_pages(&a.page, listing, |page| {
        let mut c = c.clone();
        let q = pb::DatasetQuery {
            page,
            owner_party: a.party.clone(),
        };
        async move {
            let l = c.list_datasets(q).await?.into_inner();
            let rows = l
                .datasets
                .into_iter()
                .map(|d| {
                    vec![
                        d.dataset_id,
                        d.owner_party,
                        d.location,
                        d.declared_rows.map(|n| n.to_string()).unwrap_or_default(),
                        d.description,
                    ]
                })
                .collect();
            Ok((rows, l.next_page_token))
        }
    })
    .await
}

/// `tessera licence list` filters.
#[derive(Debug, Args)]
pub struct LicenceListArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Only licences granted by this provider party.
    #[arg(long, default_value = "")]
    pub licensor: String,
    /// Only licences held by this buyer user.
    #[arg(long, default_value = "")]
    pub licensee: String,
    /// Only licences on this dataset.
    #[arg(long, default_value = "")]
    pub dataset: String,
    #[command(flatten)]
    pub page: PageArgs,
}

/// Each scene's remaining runs of a licence's policy JSON: `psi 1/2`, `psi unlimited`.
fn remaining_text(policy_json: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(policy_json) else {
        return String::new();
    };
    v["useScenes"]
        .as_array()
        .map(|scenes| {
            scenes
                .iter()
                .map(|s| {
                    let scene = s["useSence"].as_str().unwrap_or("?");
                    match (s["remainingCounts"].as_u64(), s["counts"].as_u64()) {
                        (Some(r), Some(c)) => format!("{scene} {r}/{c}"),
                        _ => format!("{scene} unlimited"),
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Prints a page (or every page) of licences.
pub async fn licences(a: LicenceListArgs) -> anyhow::Result<()> {
    let c = a.conn.connect().await?;
    let listing = Listing::new(vec![
        "licence",
        "licensor",
        "licensee",
        "dataset",
        "per_job",
        "per_1k_rows",
        "monthly",
        "remaining",
    ])
    .align_right(&[4, 5, 6]);
    print_pages(&a.page, listing, |page| {
        let mut c = c.clone();
        let q = pb::LicenceQuery {
            page,
            licensor: a.licensor.clone(),
            licensee: a.licensee.clone(),
            dataset_id: a.dataset.clone(),
        };
        async move {
            let l = c.list_licences(q).await?.into_inner();
            let rows = l
                .licences
                .into_iter()
                .map(|l| {
                    vec![
                        l.licence_id,
                        l.licensor,
                        l.licensee,
                        l.dataset_id,
                        fmt_micros(l.price_per_job_micros),
                        fmt_micros(l.price_per_1k_rows_micros),
                        fmt_micros(l.monthly_price_micros),
                        if l.withdrawn.is_empty() {
                            remaining_text(&l.policy_json)
                        } else {
                            "withdrawn".to_string()
                        },
                    ]
                })
                .collect();
            Ok((rows, l.next_page_token))
        }
    })
    .await
}

/// `tessera worker …` client commands.
#[derive(Debug, clap::Subcommand)]
pub enum WorkerCmd {
    /// List registered workers, whether each is live or lost, and the tasks running on it
    /// (workers silent for 24 h are left out).
    List(WorkerListArgs),
}

/// Runs one worker client command.
pub async fn worker(cmd: WorkerCmd) -> anyhow::Result<()> {
    match cmd {
        WorkerCmd::List(a) => workers(a).await,
    }
}

/// `tessera worker list` filters.
#[derive(Debug, Args)]
pub struct WorkerListArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Only workers acting for this party.
    #[arg(long, default_value = "")]
    pub party: String,
    #[command(flatten)]
    pub page: PageArgs,
}

/// Prints a page (or every page) of registered workers.
pub async fn workers(a: WorkerListArgs) -> anyhow::Result<()> {
    let mut c = a.conn.connect().await?;
    let zone = zone(&mut c).await?;
    let listing = Listing::new(vec![
        "worker",
        "party",
        "live",
        "running",
        "region",
        "centre",
        "hardware",
        "software",
        "peer",
        "last_seen",
        "tee",
    ])
    .align_right(&[3]);
    print_pages(&a.page, listing, |page| {
        let mut c = c.clone();
        let q = pb::WorkerQuery {
            page,
            party: a.party.clone(),
        };
        let zone = zone.clone();
        async move {
            let l = c.list_workers(q).await?.into_inner();
            let rows = l
                .workers
                .into_iter()
                .map(|w| {
                    let at = w.attributes.unwrap_or_default();
                    vec![
                        w.worker_id,
                        at.party,
                        // A registered worker that is not live is lost (silent past the
                        // heartbeat timeout, its task stream closed, or not back since the
                        // operator restarted); the operator forgets it after 24 h.
                        if w.live { "yes" } else { "lost" }.to_string(),
                        w.running_tasks.to_string(),
                        at.region,
                        at.compute_centre,
                        at.hardware,
                        at.software_env,
                        w.peer_addr,
                        date(&zone, Some(w.last_seen_ms)),
                        // The current attestation: kind, status, until when.
                        if w.tee_kind.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "{} {} until {}",
                                w.tee_kind,
                                w.tee_status,
                                date(&zone, Some(w.tee_expires_ms))
                            )
                        },
                    ]
                })
                .collect();
            Ok((rows, l.next_page_token))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_counts_read_from_the_policy() {
        let p = r#"{"useScenes":[{"useSence":"psi","counts":2,"remainingCounts":1},
                    {"useSence":"mpc"}]}"#;
        assert_eq!(remaining_text(p), "psi 1/2, mpc unlimited");
        assert_eq!(remaining_text("not json"), "");
    }
}
