//! Account RPCs (users, groups, tokens, parties, registration tokens) over the scheduler's
//! account service, and the one place a call's `x-auth-token` metadata becomes a [`Caller`].

use tessera_auth::Caller;
use tessera_proto::v1 as pb;
use tessera_scheduler::accounts::IssuedToken;
use tessera_scheduler::{AccountService, PartyRecord, TokenRecord, UserRecord};
use tonic::{Request, Status};

use crate::error::{ApiCode, status};

pub use tessera_proto::TOKEN_METADATA;

/// The caller a request's token stands for.
///
/// # Errors
/// `UNAUTHENTICATED` for a missing, malformed, unknown, expired or revoked token, or a
/// disabled user, all alike.
pub(crate) async fn authenticate<T>(
    accounts: &AccountService,
    req: &Request<T>,
) -> Result<Caller, Status> {
    let unauthenticated = || {
        ApiCode::Unauthenticated.status(format!(
            "a valid token is needed in the {TOKEN_METADATA} metadata (HTTP header X-Auth-Token)"
        ))
    };
    let text = req
        .metadata()
        .get(TOKEN_METADATA)
        .and_then(|v| v.to_str().ok());
    let caller = match text {
        Some(t) => accounts.authenticate(t).await.ok(),
        None => None,
    };
    caller.ok_or_else(|| {
        accounts.count_unauthenticated();
        unauthenticated()
    })
}

fn user_to_pb(u: UserRecord) -> pb::User {
    pb::User {
        user_id: u.user_id,
        roles: u.roles,
        groups: u.groups.into_iter().collect(),
        created_at_ms: u.created_at_ms,
        disabled_at_ms: u.disabled_at_ms.unwrap_or(0),
    }
}

fn token_to_pb(t: TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        token_id: t.token_id,
        kind: t.kind.as_str().into(),
        user_id: t.user_id.unwrap_or_default(),
        party_id: t.party_id.unwrap_or_default(),
        label: t.label,
        created_at_ms: t.created_at_ms,
        expires_at_ms: t.expires_at_ms,
        revoked_at_ms: t.revoked_at_ms.unwrap_or(0),
    }
}

fn issued_to_pb(t: IssuedToken) -> pb::IssuedToken {
    pb::IssuedToken {
        secret_token: t.token.reveal().to_string(),
        info: Some(token_to_pb(t.record)),
    }
}

fn party_to_pb(p: PartyRecord) -> pb::Party {
    pb::Party {
        party_id: p.party_id,
        owner_user_id: p.owner_user_id,
        created_at_ms: p.created_at_ms,
    }
}

fn ttl(ms: i64) -> Option<i64> {
    (ms != 0).then_some(ms)
}

pub(crate) async fn create_user(
    a: &AccountService,
    who: &Caller,
    r: pb::CreateUserRequest,
) -> Result<pb::User, Status> {
    a.create_user(who, &r.user_id, &r.roles)
        .await
        .map(user_to_pb)
        .map_err(|e| status(&e))
}

pub(crate) async fn list_users(a: &AccountService, who: &Caller) -> Result<pb::UserList, Status> {
    let users = a.users(who).await.map_err(|e| status(&e))?;
    Ok(pb::UserList {
        users: users.into_iter().map(user_to_pb).collect(),
    })
}

pub(crate) async fn disable_user(
    a: &AccountService,
    who: &Caller,
    r: pb::UserRef,
) -> Result<(), Status> {
    a.disable_user(who, &r.user_id)
        .await
        .map_err(|e| status(&e))
}

pub(crate) async fn enable_user(
    a: &AccountService,
    who: &Caller,
    r: pb::UserRef,
) -> Result<(), Status> {
    a.enable_user(who, &r.user_id).await.map_err(|e| status(&e))
}

pub(crate) async fn group_member(
    a: &AccountService,
    who: &Caller,
    r: pb::GroupMemberRequest,
    add: bool,
) -> Result<pb::GroupMemberChange, Status> {
    let changed = if add {
        a.add_group_member(who, &r.group_id, &r.user_id).await
    } else {
        a.remove_group_member(who, &r.group_id, &r.user_id).await
    }
    .map_err(|e| status(&e))?;
    Ok(pb::GroupMemberChange { changed })
}

pub(crate) async fn create_token(
    a: &AccountService,
    who: &Caller,
    r: pb::CreateTokenRequest,
) -> Result<pb::IssuedToken, Status> {
    a.create_token(who, &r.user_id, &r.label, ttl(r.ttl_ms))
        .await
        .map(issued_to_pb)
        .map_err(|e| status(&e))
}

pub(crate) async fn list_tokens(a: &AccountService, who: &Caller) -> Result<pb::TokenList, Status> {
    let tokens = a.tokens(who).await.map_err(|e| status(&e))?;
    Ok(pb::TokenList {
        tokens: tokens.into_iter().map(token_to_pb).collect(),
    })
}

pub(crate) async fn revoke_token(
    a: &AccountService,
    who: &Caller,
    r: pb::TokenRef,
) -> Result<(), Status> {
    a.revoke_token(who, &r.token_id)
        .await
        .map_err(|e| status(&e))
}

pub(crate) async fn create_party(
    a: &AccountService,
    who: &Caller,
    r: pb::CreatePartyRequest,
) -> Result<pb::Party, Status> {
    a.create_party(who, &r.party_id, &r.owner_user_id)
        .await
        .map(party_to_pb)
        .map_err(|e| status(&e))
}

pub(crate) async fn registration_token(
    a: &AccountService,
    who: &Caller,
    r: pb::RegistrationTokenRequest,
) -> Result<pb::IssuedToken, Status> {
    a.issue_registration_token(who, &r.party_id, ttl(r.ttl_ms))
        .await
        .map(issued_to_pb)
        .map_err(|e| status(&e))
}
