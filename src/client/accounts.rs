//! Account commands: `user create|list|disable`, `group add|remove`,
//! `token create|list|revoke`, `party create|registration-token`. A new token's text is
//! printed once, on stdout alone (so it can be redirected into a file); the operator keeps
//! only its hash.

use clap::Subcommand;
use tessera_proto::v1 as pb;

use super::conn::Conn;
use super::lists::{date, zone};
use super::output::{Listing, Out};

/// Users.
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Create a user (operator only).
    Create {
        #[command(flatten)]
        conn: Conn,
        /// The new user's id (1-64 of A-Z a-z 0-9 - _ . @).
        id: String,
        /// Its roles, comma-separated: provider, developer, buyer, operator.
        #[arg(long, required = true)]
        roles: String,
    },
    /// List users with their roles and groups (operator only).
    List {
        #[command(flatten)]
        conn: Conn,
        /// Print CSV instead of a table.
        #[arg(long)]
        csv: bool,
    },
    /// Disable a user: its tokens stop working at once (operator only).
    Disable {
        #[command(flatten)]
        conn: Conn,
        /// The user id.
        id: String,
    },
    /// Enable a disabled user again: its unexpired, unrevoked tokens work again (operator
    /// only).
    Enable {
        #[command(flatten)]
        conn: Conn,
        /// The user id.
        id: String,
    },
}

/// Group membership, recorded by the operator (a request can never claim a group).
#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Record a user in a group.
    Add {
        #[command(flatten)]
        conn: Conn,
        /// The group id.
        group: String,
        /// The user id.
        user: String,
    },
    /// Remove a user from a group.
    Remove {
        #[command(flatten)]
        conn: Conn,
        /// The group id.
        group: String,
        /// The user id.
        user: String,
    },
}

/// API tokens.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Issue an API token and print it once (for oneself; the operator for anyone).
    Create {
        #[command(flatten)]
        conn: Conn,
        /// The user the token is for.
        #[arg(long, required = true)]
        user: String,
        /// What the token is for (free text, shown in listings).
        #[arg(long, default_value = "")]
        label: String,
        /// Lifetime in days (default 90, at most 400).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=400))]
        days: Option<u32>,
    },
    /// List tokens (ids and dates, never secrets): one's own, or all for the operator.
    List {
        #[command(flatten)]
        conn: Conn,
        /// Print CSV instead of a table.
        #[arg(long)]
        csv: bool,
    },
    /// Revoke a token by its id (one's own; the operator any).
    Revoke {
        #[command(flatten)]
        conn: Conn,
        /// The token id (the 16 hex digits after `tsk_`).
        id: String,
    },
}

/// Parties (a provider's or buyer's side in jobs) and their workers' registration tokens.
#[derive(Debug, Subcommand)]
pub enum PartyCmd {
    /// Create a party owned by a user (oneself; the operator for anyone).
    Create {
        #[command(flatten)]
        conn: Conn,
        /// The party id.
        id: String,
        /// The owning user.
        #[arg(long, required = true)]
        owner: String,
    },
    /// Issue a registration token for the party's workers and print it once (its owner or
    /// the operator).
    RegistrationToken {
        #[command(flatten)]
        conn: Conn,
        /// The party id.
        id: String,
        /// Lifetime in hours (default 24, at most 9600).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=9600))]
        hours: Option<u32>,
    },
}

fn days_ms(days: Option<u32>) -> i64 {
    days.map_or(0, |d| i64::from(d) * 86_400_000)
}

/// Prints a new token: its text alone on stdout, what it is on stderr.
fn print_issued(t: &pb::IssuedToken) -> anyhow::Result<()> {
    if let Some(i) = &t.info {
        let owner = if i.user_id.is_empty() {
            format!("party {}", i.party_id)
        } else {
            format!("user {}", i.user_id)
        };
        eprintln!(
            "issued {} token {} for {owner}; it is shown this once: keep it secret",
            i.kind, i.token_id
        );
    }
    Out::stdout().line(&t.secret_token)?;
    Ok(())
}

/// As the operator (`admin`): creates user `user` with `roles`, the party `party` it owns,
/// and an API token for it (`ttl_ms`, 0: the default); returns the token's secret. How the
/// demo and the admission benchmark set up their parties.
///
/// Errors: any call refused.
pub async fn user_with_party(
    admin: &mut super::conn::Client,
    user: &str,
    roles: &str,
    party: &str,
    label: &str,
    ttl_ms: i64,
) -> anyhow::Result<zeroize::Zeroizing<String>> {
    admin
        .create_user(pb::CreateUserRequest {
            user_id: user.into(),
            roles: roles.into(),
        })
        .await?;
    admin
        .create_party(pb::CreatePartyRequest {
            party_id: party.into(),
            owner_user_id: user.into(),
        })
        .await?;
    let t = admin
        .create_token(pb::CreateTokenRequest {
            user_id: user.into(),
            label: label.into(),
            ttl_ms,
        })
        .await?
        .into_inner();
    Ok(zeroize::Zeroizing::new(t.secret_token))
}

/// Runs one user command.
pub async fn user(cmd: UserCmd) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Create { conn, id, roles } => {
            let u = conn
                .connect()
                .await?
                .create_user(pb::CreateUserRequest { user_id: id, roles })
                .await?
                .into_inner();
            Out::stdout().line(format!("created user {} ({})", u.user_id, u.roles))?;
        }
        UserCmd::List { conn, csv } => {
            let mut c = conn.connect().await?;
            let zone = zone(&mut c).await?;
            let users = c.list_users(pb::ListRequest {}).await?.into_inner().users;
            let mut l = Listing::new(vec!["user", "roles", "groups", "created", "disabled"]);
            for u in users {
                l.push(vec![
                    u.user_id,
                    u.roles,
                    u.groups.join(","),
                    date(&zone, Some(u.created_at_ms)),
                    date(&zone, (u.disabled_at_ms != 0).then_some(u.disabled_at_ms)),
                ]);
            }
            Out::stdout().listing(&l, csv)?;
        }
        UserCmd::Disable { conn, id } => {
            conn.connect()
                .await?
                .disable_user(pb::UserRef {
                    user_id: id.clone(),
                })
                .await?;
            Out::stdout().line(format!("disabled user {id}; its tokens no longer work"))?;
        }
        UserCmd::Enable { conn, id } => {
            conn.connect()
                .await?
                .enable_user(pb::UserRef {
                    user_id: id.clone(),
                })
                .await?;
            Out::stdout().line(format!("enabled user {id}"))?;
        }
    }
    Ok(())
}

/// Runs one group command.
pub async fn group(cmd: GroupCmd) -> anyhow::Result<()> {
    let (conn, group, user, add) = match cmd {
        GroupCmd::Add { conn, group, user } => (conn, group, user, true),
        GroupCmd::Remove { conn, group, user } => (conn, group, user, false),
    };
    let req = pb::GroupMemberRequest {
        group_id: group.clone(),
        user_id: user.clone(),
    };
    let mut c = conn.connect().await?;
    let changed = if add {
        c.add_group_member(req).await?
    } else {
        c.remove_group_member(req).await?
    }
    .into_inner()
    .changed;
    let text = match (add, changed) {
        (true, true) => format!("added {user} to group {group}"),
        (true, false) => format!("{user} was already in group {group}"),
        (false, true) => format!("removed {user} from group {group}"),
        (false, false) => format!("{user} was not in group {group}"),
    };
    Out::stdout().line(text)?;
    Ok(())
}

/// Runs one token command.
pub async fn token(cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Create {
            conn,
            user,
            label,
            days,
        } => {
            let t = conn
                .connect()
                .await?
                .create_token(pb::CreateTokenRequest {
                    user_id: user,
                    label,
                    ttl_ms: days_ms(days),
                })
                .await?
                .into_inner();
            print_issued(&t)?;
        }
        TokenCmd::List { conn, csv } => {
            let mut c = conn.connect().await?;
            let zone = zone(&mut c).await?;
            let tokens = c.list_tokens(pb::ListRequest {}).await?.into_inner().tokens;
            let mut l = Listing::new(vec![
                "id", "kind", "user", "party", "label", "created", "expires", "revoked",
            ]);
            for t in tokens {
                l.push(vec![
                    t.token_id,
                    t.kind,
                    t.user_id,
                    t.party_id,
                    t.label,
                    date(&zone, Some(t.created_at_ms)),
                    date(&zone, Some(t.expires_at_ms)),
                    date(&zone, (t.revoked_at_ms != 0).then_some(t.revoked_at_ms)),
                ]);
            }
            Out::stdout().listing(&l, csv)?;
        }
        TokenCmd::Revoke { conn, id } => {
            conn.connect()
                .await?
                .revoke_token(pb::TokenRef {
                    token_id: id.clone(),
                })
                .await?;
            Out::stdout().line(format!("revoked token {id}"))?;
        }
    }
    Ok(())
}

/// Runs one party command.
pub async fn party(cmd: PartyCmd) -> anyhow::Result<()> {
    match cmd {
        PartyCmd::Create { conn, id, owner } => {
            let p = conn
                .connect()
                .await?
                .create_party(pb::CreatePartyRequest {
                    party_id: id,
                    owner_user_id: owner,
                })
                .await?
                .into_inner();
            Out::stdout().line(format!(
                "created party {} owned by {}",
                p.party_id, p.owner_user_id
            ))?;
        }
        PartyCmd::RegistrationToken { conn, id, hours } => {
            let t = conn
                .connect()
                .await?
                .issue_registration_token(pb::RegistrationTokenRequest {
                    party_id: id,
                    ttl_ms: hours.map_or(0, |h| i64::from(h) * 3_600_000),
                })
                .await?
                .into_inner();
            print_issued(&t)?;
        }
    }
    Ok(())
}
