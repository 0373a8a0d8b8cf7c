//! Who is calling and what each caller may do: the roles of the trusted-data-space manual,
//! API and registration tokens ([`token`]), and **the one table of rules** — every operation
//! of the operator's APIs × the roles that may call it × the ownership rule that applies
//! ([`Operation::rule`], enforced by [`authorize`]). Handlers describe the resource a call
//! touches as a [`Target`]; they never decide access themselves.
//!
//! The table is an exhaustive `match`, so an operation without a rule does not compile, and
//! the gateway's tests check that every RPC and REST route names an [`Operation`].
//!
//! Pure: no I/O, no clock. The store keeps users, groups and token hashes; the scheduler's
//! account service turns a presented token into a [`Caller`].

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

pub mod token;

pub use token::{MalformedToken, Token, TokenKind};

/// A user's role, as in the trusted-data-space operations manual: the four parties of a data
/// space. A user may hold several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Provides datasets and sets their licences' policies.
    Provider,
    /// Develops with licensed data (runs jobs under licences, as a buyer does).
    Developer,
    /// Buys licences and runs jobs under them.
    Buyer,
    /// Runs the platform: accounts, money, limits, freezes, audit.
    Operator,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 4] = [Role::Provider, Role::Developer, Role::Buyer, Role::Operator];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Provider => "provider",
            Role::Developer => "developer",
            Role::Buyer => "buyer",
            Role::Operator => "operator",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Role::Provider => 1,
            Role::Developer => 2,
            Role::Buyer => 4,
            Role::Operator => 8,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no [`Role`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; expected one of: provider, developer, buyer, operator")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s.trim())
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// A set of roles. Text form: the names joined by `,` in [`Role::ALL`] order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Roles(u8);

impl Roles {
    /// No role.
    pub const NONE: Roles = Roles(0);

    /// The set holding `roles`.
    pub fn of(roles: &[Role]) -> Self {
        Roles(roles.iter().fold(0, |acc, r| acc | r.bit()))
    }

    /// Whether `role` is in the set.
    pub fn has(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// Whether any of `roles` is in the set.
    pub fn any(self, roles: &[Role]) -> bool {
        roles.iter().any(|r| self.has(*r))
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The roles, in [`Role::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.has(*r))
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Role::as_str).collect();
        f.write_str(&names.join(","))
    }
}

impl FromStr for Roles {
    type Err = UnknownRole;

    /// Parses `a,b,c` (at least one role; duplicates are harmless).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let roles = s
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<Role>, _>>()?;
        Ok(Roles::of(&roles))
    }
}

/// An authenticated user: its id, its roles and the groups the operator recorded it in (never
/// groups claimed in a request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// User id.
    pub user: String,
    /// Its roles.
    pub roles: Roles,
    /// Its recorded groups.
    pub groups: BTreeSet<String>,
    /// When the token that authenticated this call expires (UTC ms; `None` when not known):
    /// a token a user mints for itself never outlives it.
    pub token_expires_at_ms: Option<i64>,
}

impl Principal {
    /// Whether the principal is the operator (holds the `operator` role).
    pub fn is_operator(&self) -> bool {
        self.roles.has(Role::Operator)
    }

    /// Whether `name` is this user or one of its recorded groups.
    pub fn is_or_belongs_to(&self, name: &str) -> bool {
        self.user == name || self.groups.contains(name)
    }
}

/// Who made a call: a user with an API token, a worker with its worker credential, or a
/// worker presenting a party's registration token (only to register).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A user.
    User(Principal),
    /// A registered worker of `party`.
    Worker {
        /// Its party.
        party: String,
        /// Its id.
        worker_id: String,
    },
    /// A process holding `party`'s registration token.
    Registrant {
        /// The party the token was issued for.
        party: String,
    },
}

impl Caller {
    /// A short description for logs and audit entries (ids only, never a secret).
    pub fn describe(&self) -> String {
        match self {
            Caller::User(p) => format!("user {}", p.user),
            Caller::Worker { party, worker_id } => format!("worker {worker_id} of {party}"),
            Caller::Registrant { party } => format!("registrant of {party}"),
        }
    }
}

/// Which callers may attempt an operation at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// Users holding the `operator` role only.
    Operator,
    /// Users holding one of these roles, or the operator.
    Roles(&'static [Role]),
    /// Users holding one of these roles; the operator role alone does not suffice (it acts
    /// for no one: e.g. only a buyer submits its own jobs).
    OnlyRoles(&'static [Role]),
    /// Any authenticated user.
    AnyUser,
    /// A registered worker, about itself.
    Worker,
    /// A holder of a party's registration token.
    Registrant,
}

/// The ownership rule applied once the role gate is passed. The operator passes every scope
/// unless its [`Who`] is [`Who::OnlyRoles`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Nothing owned is touched.
    Global,
    /// The request acts for a user ([`Target::user`]): it must be the caller.
    OwnUser,
    /// A deposit: for the caller itself, and cash only ([`Target::voucher`] is the operator's:
    /// vouchers are the platform's marketing instruments, operations manual §3.8).
    Deposit,
    /// The request names a party ([`Target::party_owner`]): the caller must own it.
    OwnParty,
    /// A licence: the caller owns its licensor party, or is (or belongs to a group that is)
    /// its licensee.
    LicenceParty,
    /// A job: the caller submitted it ([`Target::job_buyer`]) or owns the licensor party.
    JobParty,
    /// A job: only the caller who submitted it.
    JobBuyer,
    /// A job submission: as itself, under a licence whose licensee is it or one of its groups,
    /// with a buyer party it owns and a dataset of that party.
    Submission,
    /// A listing: allowed; the service shows a non-operator only its own rows.
    OwnRows,
    /// A worker call about a worker ([`Target::worker_id`]): the calling worker itself.
    OwnWorker,
    /// A registration for [`Target::party`]: the party the token was issued for.
    RegistrationParty,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Who may attempt it.
    pub who: Who,
    /// The ownership rule.
    pub scope: Scope,
    /// Whether a denial is written to the audit chain (admin and money operations).
    pub audit_denial: bool,
}

const fn rule(who: Who, scope: Scope, audit_denial: bool) -> Rule {
    Rule {
        who,
        scope,
        audit_denial,
    }
}

const OWNERS: &[Role] = &[Role::Provider, Role::Buyer, Role::Developer];
const CONSUMERS: &[Role] = &[Role::Buyer, Role::Developer];
const PROVIDERS: &[Role] = &[Role::Provider];

macro_rules! operations {
    ($($(#[$doc:meta])* $name:ident => $rule:expr,)*) => {
        /// Every operation of the operator's APIs (gRPC methods by name; REST routes map to
        /// the same), with its rule in [`Operation::rule`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Operation {
            $($(#[$doc])* $name,)*
        }

        impl Operation {
            /// Every operation.
            pub const ALL: &'static [Operation] = &[$(Operation::$name,)*];

            /// The gRPC method name.
            pub fn name(self) -> &'static str {
                match self {
                    $(Operation::$name => stringify!($name),)*
                }
            }

            /// The operation's row of the table.
            pub fn rule(self) -> Rule {
                match self {
                    $(Operation::$name => $rule,)*
                }
            }
        }
    };
}

operations! {
    /// A worker registers with its party's registration token (or again, under its own id,
    /// with its worker credential).
    RegisterWorker => rule(Who::Registrant, Scope::RegistrationParty, true),
    /// A worker's heartbeat.
    Heartbeat => rule(Who::Worker, Scope::OwnWorker, false),
    /// A worker's task stream.
    PullTasks => rule(Who::Worker, Scope::OwnWorker, false),
    /// A worker's progress.
    ReportProgress => rule(Who::Worker, Scope::OwnWorker, false),
    /// A worker's task result.
    ReportResult => rule(Who::Worker, Scope::OwnWorker, false),
    /// A worker's delivery point.
    ReportDelivered => rule(Who::Worker, Scope::OwnWorker, false),
    /// A new peer-link certificate for a running worker, before its current one expires.
    RenewCertificate => rule(Who::Worker, Scope::OwnWorker, false),
    /// A nonce for a worker's next TEE attestation.
    TeeChallenge => rule(Who::Worker, Scope::OwnWorker, false),
    /// A worker's TEE attestation.
    TeeAttest => rule(Who::Worker, Scope::OwnWorker, true),
    /// A dataset key for a worker's live `tee` task (the key broker decides).
    ReleaseDatasetKey => rule(Who::Worker, Scope::OwnWorker, true),
    /// A worker's link to the operator's dealer for its live `mpc` task.
    Dealer => rule(Who::Worker, Scope::OwnWorker, true),
    /// A dataset of a party the caller owns.
    CreateDataset => rule(Who::Roles(OWNERS), Scope::OwnParty, false),
    /// A data item's operation log: the owner of the dataset's party (or the operator).
    DataItemLog => rule(Who::Roles(OWNERS), Scope::OwnParty, false),
    /// A dataset's sealing key for the `tee` scene: the owner of the dataset's party.
    GetSealingKey => rule(Who::Roles(OWNERS), Scope::OwnParty, true),
    /// A licence on a dataset of a party the provider owns.
    CreateLicence => rule(Who::Roles(PROVIDERS), Scope::OwnParty, false),
    /// A licence, to its licensor's owner or its licensee.
    GetLicence => rule(Who::AnyUser, Scope::LicenceParty, false),
    /// A job, submitted by a buyer or developer as itself.
    SubmitJob => rule(Who::OnlyRoles(CONSUMERS), Scope::Submission, false),
    /// A job, to its buyer or its provider.
    GetJob => rule(Who::AnyUser, Scope::JobParty, false),
    /// A job's progress stream, to its buyer or its provider.
    WatchJob => rule(Who::AnyUser, Scope::JobParty, false),
    /// Cancelling a job: its buyer or the operator.
    CancelJob => rule(Who::AnyUser, Scope::JobBuyer, true),
    /// A deposit: a customer's cash for itself; the operator for anyone, and vouchers.
    Deposit => rule(Who::AnyUser, Scope::Deposit, true),
    /// Usage events, own only.
    ListUsage => rule(Who::AnyUser, Scope::OwnRows, false),
    /// Balances, own only.
    ListBalances => rule(Who::AnyUser, Scope::OwnRows, false),
    /// Transfers, own only.
    ListTransfers => rule(Who::AnyUser, Scope::OwnRows, false),
    /// Verifying the audit chain.
    VerifyAudit => rule(Who::Operator, Scope::Global, true),
    /// A customer's credit line.
    SetCreditLimit => rule(Who::Operator, Scope::Global, true),
    /// Bills, own only.
    ListBills => rule(Who::AnyUser, Scope::OwnRows, false),
    /// A bill's lines: the bill's customer or the operator.
    ListBillLines => rule(Who::AnyUser, Scope::OwnUser, false),
    /// Closing due bills.
    CloseDueBills => rule(Who::Operator, Scope::Global, true),
    /// Provider statements, own parties only.
    ListStatements => rule(Who::AnyUser, Scope::OwnRows, false),
    /// A payout to a provider.
    Payout => rule(Who::Operator, Scope::Global, true),
    /// A purchase or freeze limit.
    SetLimit => rule(Who::Operator, Scope::Global, true),
    /// The freeze white list.
    SetWhitelist => rule(Who::Operator, Scope::Global, true),
    /// A manual freeze.
    SetFreeze => rule(Who::Operator, Scope::Global, true),
    /// A customer's account status: itself or the operator.
    GetAccountStatus => rule(Who::AnyUser, Scope::OwnUser, false),
    /// Ordering or renewing a licence term, for oneself.
    Subscribe => rule(Who::Roles(CONSUMERS), Scope::OwnUser, true),
    /// Ending a licence term, for oneself.
    Unsubscribe => rule(Who::Roles(CONSUMERS), Scope::OwnUser, true),
    /// Jobs, own only.
    ListJobs => rule(Who::AnyUser, Scope::OwnRows, false),
    /// Datasets, own parties' only.
    ListDatasets => rule(Who::AnyUser, Scope::OwnRows, false),
    /// Licences, own only (as licensor owner or licensee).
    ListLicences => rule(Who::AnyUser, Scope::OwnRows, false),
    /// Workers, own parties' only.
    ListWorkers => rule(Who::AnyUser, Scope::OwnRows, false),
    /// The operator's calendar zone.
    GetOperatorInfo => rule(Who::AnyUser, Scope::Global, false),
    /// A new user.
    CreateUser => rule(Who::Operator, Scope::Global, true),
    /// Users.
    ListUsers => rule(Who::Operator, Scope::Global, true),
    /// Disabling a user (its tokens stop working).
    DisableUser => rule(Who::Operator, Scope::Global, true),
    /// Enabling a disabled user again.
    EnableUser => rule(Who::Operator, Scope::Global, true),
    /// Recording a user in a group.
    AddGroupMember => rule(Who::Operator, Scope::Global, true),
    /// Removing a user from a group.
    RemoveGroupMember => rule(Who::Operator, Scope::Global, true),
    /// A new API token: for oneself, or by the operator for anyone.
    CreateToken => rule(Who::AnyUser, Scope::OwnUser, true),
    /// Tokens (ids, never secrets): own API tokens and own parties' registration tokens, or
    /// all for the operator.
    ListTokens => rule(Who::AnyUser, Scope::OwnRows, false),
    /// Revoking a token: its user (a registration token: its party's owner) or the operator.
    RevokeToken => rule(Who::AnyUser, Scope::OwnUser, true),
    /// A party owned by the caller (the operator names any owner).
    CreateParty => rule(Who::Roles(OWNERS), Scope::OwnUser, true),
    /// A worker registration token for a party: its owner or the operator.
    IssueRegistrationToken => rule(Who::AnyUser, Scope::OwnParty, true),
    /// T/AI 123.12 `/registerData`: a dataset of a party the provider owns.
    RegisterData => rule(Who::Roles(PROVIDERS), Scope::OwnParty, false),
    /// T/AI 123.12 `/publishData`: a registration of a party the provider owns.
    PublishData => rule(Who::Roles(PROVIDERS), Scope::OwnParty, false),
    /// T/AI 123.12 `/publishDatasets`: a controlled dataset of a party the provider owns.
    PublishDatasets => rule(Who::Roles(PROVIDERS), Scope::OwnParty, false),
    /// T/AI 123.12 `/queryPublishedData`: the catalogue, to any user.
    QueryPublishedData => rule(Who::AnyUser, Scope::Global, false),
    /// T/AI 123.12 `/revokePublishedData`: data of a party the provider owns.
    RevokePublishedData => rule(Who::Roles(PROVIDERS), Scope::OwnParty, true),
    /// T/AI 123.12 `/registerDemand`: a buyer's demand, as itself.
    RegisterDemand => rule(Who::Roles(CONSUMERS), Scope::OwnUser, false),
    /// T/AI 123.12 `/publishDemand`: its own demand.
    PublishDemand => rule(Who::Roles(CONSUMERS), Scope::OwnUser, false),
    /// T/AI 123.12 `/queryPublishedDemand`: a published demand to any user, an unpublished
    /// one to its demander.
    QueryPublishedDemand => rule(Who::AnyUser, Scope::Global, false),
    /// T/AI 123.12 `/revokeDemand`: its own demand.
    RevokeDemand => rule(Who::Roles(CONSUMERS), Scope::OwnUser, false),
    /// Tessera's `/queryMatches`: the data matching a demand the caller may see.
    QueryMatches => rule(Who::AnyUser, Scope::Global, false),
    /// T/AI 123.12 `/confirmDemand`: its own demand.
    ConfirmDemand => rule(Who::Roles(CONSUMERS), Scope::OwnUser, false),
    /// T/AI 123.12 `/queryDemandForSettlement`: the confirmation's demander or the owner of
    /// its data's party.
    QueryDemandForSettlement => rule(Who::AnyUser, Scope::LicenceParty, false),
    /// T/AI 123.12 `/settlement`: the demander pays for itself.
    Settlement => rule(Who::Roles(CONSUMERS), Scope::OwnUser, true),
    /// T/AI 123.12 `/querySettlement`: the demander or the data's owner.
    QuerySettlement => rule(Who::AnyUser, Scope::LicenceParty, false),
    /// T/AI 123.12 `/deliver`: the licensee, with its licence.
    Deliver => rule(Who::Roles(CONSUMERS), Scope::OwnUser, false),
    /// T/AI 123.12 `/queryDeliverResult`: the demander or the data's owner.
    QueryDeliverResult => rule(Who::AnyUser, Scope::LicenceParty, false),
    /// T/AI 123.12 `/deliverDatasets`: the licensor party's owner sets the usage policy.
    DeliverDatasets => rule(Who::Roles(PROVIDERS), Scope::OwnParty, true),
    /// T/AI 123.12 `/updateLicenses`: the licensor party's owner reissues a licence.
    UpdateLicenses => rule(Who::Roles(PROVIDERS), Scope::OwnParty, true),
    /// Tessera's `/uploadData`: the file of a registration of a party the provider owns.
    UploadData => rule(Who::Roles(PROVIDERS), Scope::OwnParty, false),
    /// Tessera's `/revokeLicenses`: the licensor party's owner withdraws a licence or a
    /// policy of its data.
    RevokeLicenses => rule(Who::Roles(PROVIDERS), Scope::OwnParty, true),
}

/// Which side of a job a caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobSide {
    /// The buyer: the submitting user, or the owner of the buyer party.
    Buyer,
    /// The provider: the owner of the provider (licensor) party.
    Provider,
}

/// Whose rows a caller sees in listings (the [`Scope::OwnRows`] operations) and which side of
/// a job it is on: the operator sees every row and is on no job's side; any other user sees
/// the rows of its own user id (as a customer, a licensee, a token holder), of the parties it
/// owns and, for licences, of the groups it is recorded in; a worker or registrant sees none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// Every row (the operator).
    All,
    /// A user's own rows.
    Own {
        /// The user.
        user: String,
        /// Its recorded groups.
        groups: BTreeSet<String>,
        /// The parties it owns.
        parties: BTreeSet<String>,
    },
    /// No row (a worker or registrant calling a user operation).
    Nobody,
}

impl Viewer {
    /// The viewer for `caller`, given the parties the caller's user owns.
    pub fn of(caller: &Caller, owned_parties: BTreeSet<String>) -> Viewer {
        match caller {
            Caller::User(p) if p.is_operator() => Viewer::All,
            Caller::User(p) => Viewer::Own {
                user: p.user.clone(),
                groups: p.groups.clone(),
                parties: owned_parties,
            },
            Caller::Worker { .. } | Caller::Registrant { .. } => Viewer::Nobody,
        }
    }

    /// Whether every row is seen.
    pub fn is_all(&self) -> bool {
        matches!(self, Viewer::All)
    }

    /// The user whose rows are seen (`None` for [`Viewer::All`] and [`Viewer::Nobody`]).
    pub fn user(&self) -> Option<&str> {
        match self {
            Viewer::Own { user, .. } => Some(user),
            _ => None,
        }
    }

    /// Whether rows of customer (user) `user` are seen.
    pub fn sees_user(&self, user: &str) -> bool {
        match self {
            Viewer::All => true,
            Viewer::Own { user: me, .. } => me == user,
            Viewer::Nobody => false,
        }
    }

    /// Whether rows of party `party` are seen.
    pub fn sees_party(&self, party: &str) -> bool {
        match self {
            Viewer::All => true,
            Viewer::Own { parties, .. } => parties.contains(party),
            Viewer::Nobody => false,
        }
    }

    /// Whether a licence of `licensor` to `licensee` (a user or group) is seen.
    pub fn sees_licence(&self, licensor: &str, licensee: &str) -> bool {
        match self {
            Viewer::All => true,
            Viewer::Own {
                user,
                groups,
                parties,
            } => parties.contains(licensor) || user == licensee || groups.contains(licensee),
            Viewer::Nobody => false,
        }
    }

    /// The side of a job (submitted by `buyer_user`, between `buyer_party` and
    /// `provider_party`) the viewer is on; `None` for the operator and for anyone else.
    pub fn side(
        &self,
        buyer_user: &str,
        buyer_party: &str,
        provider_party: &str,
    ) -> Option<JobSide> {
        let Viewer::Own { user, parties, .. } = self else {
            return None;
        };
        if user == buyer_user || (!buyer_party.is_empty() && parties.contains(buyer_party)) {
            Some(JobSide::Buyer)
        } else if !provider_party.is_empty() && parties.contains(provider_party) {
            Some(JobSide::Provider)
        } else {
            None
        }
    }
}

impl Who {
    /// In words, for the documentation's table.
    pub fn words(self) -> String {
        let names = |roles: &[Role]| {
            roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Who::Operator => "operator".into(),
            Who::Roles(r) => format!("{} (or operator)", names(r)),
            Who::OnlyRoles(r) => format!("{} (not the operator)", names(r)),
            Who::AnyUser => "any user".into(),
            Who::Worker => "a registered worker".into(),
            Who::Registrant => {
                "a party's registration token (or the worker's own credential)".into()
            }
        }
    }
}

impl Scope {
    /// In words, for the documentation's table.
    pub fn words(self) -> &'static str {
        match self {
            Scope::Global => "-",
            Scope::OwnUser => "acts only for itself",
            Scope::Deposit => "its own cash only (vouchers: the operator)",
            Scope::OwnParty => "a party it owns",
            Scope::LicenceParty => "licensor party's owner or licensee (user or recorded group)",
            Scope::JobParty => "the job's buyer or its provider party's owner",
            Scope::JobBuyer => "the job's buyer",
            Scope::Submission => {
                "as itself; licensee is it or its recorded group; buyer party and dataset its own"
            }
            Scope::OwnRows => "only its own rows are listed",
            Scope::OwnWorker => "about itself only",
            Scope::RegistrationParty => "the token's party only",
        }
    }
}

/// The table as Markdown rows (`| operation | who | scope | denial audited |`), in
/// [`Operation::ALL`] order: what ARCHITECTURE.md shows (a test keeps the two equal).
pub fn rules_markdown() -> String {
    let mut out = String::from(
        "| operation | who may call | ownership | denial audited |\n|---|---|---|---|\n",
    );
    for op in Operation::ALL {
        let r = op.rule();
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            op.name(),
            r.who.words(),
            r.scope.words(),
            if r.audit_denial { "yes" } else { "no" }
        ));
    }
    out
}

/// What a call touches, as the handler found it in the store. Only the fields the
/// operation's [`Scope`] reads need be set.
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    /// The user the request acts for (customer, subscriber, token owner).
    pub user: Option<&'a str>,
    /// The owner of the party the request names (`None`: no such party).
    pub party_owner: Option<&'a str>,
    /// The party the request names (registration).
    pub party: Option<&'a str>,
    /// A licence's licensee (a user or a group).
    pub licensee: Option<&'a str>,
    /// The owner of a licence's or job's licensor party.
    pub licensor_owner: Option<&'a str>,
    /// The user who submitted a job.
    pub job_buyer: Option<&'a str>,
    /// Submission: the owner of the buyer party, and whether the buyer dataset belongs to it.
    pub buyer_party_owner: Option<&'a str>,
    /// Submission: whether the named buyer dataset belongs to the named buyer party.
    pub dataset_in_buyer_party: bool,
    /// The worker a worker call is about.
    pub worker_id: Option<&'a str>,
    /// A deposit into a voucher balance (not cash).
    pub voucher: bool,
}

/// Why a call was denied. The message names only what the caller may know (its own
/// identity, the operation), never the owner of someone else's resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The caller's kind or roles may not call this operation at all.
    #[error("{caller} may not call {operation}: it needs {needs}")]
    Role {
        /// The caller, described.
        caller: String,
        /// The operation.
        operation: &'static str,
        /// What it needs, in words.
        needs: String,
    },
    /// The caller may call the operation, but not on this resource.
    #[error("{caller} may not call {operation} on this resource: {why}")]
    NotOwner {
        /// The caller, described.
        caller: String,
        /// The operation.
        operation: &'static str,
        /// Which rule failed, in words that reveal nothing of others.
        why: &'static str,
    },
}

/// Decides whether `caller` may perform `op` on `target`, by the operation's row of the table.
///
/// # Errors
/// [`Denied`] naming the rule that failed.
pub fn authorize(op: Operation, caller: &Caller, target: &Target<'_>) -> Result<(), Denied> {
    let r = op.rule();
    let role_denied = |needs: String| Denied::Role {
        caller: caller.describe(),
        operation: op.name(),
        needs,
    };
    let names = |roles: &[Role]| {
        roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(" or ")
    };
    // The role gate.
    let (principal, operator_passes) = match (r.who, caller) {
        (Who::Worker, Caller::Worker { worker_id, .. }) => {
            return if target.worker_id == Some(worker_id.as_str()) {
                Ok(())
            } else {
                Err(not_owner(
                    caller,
                    op,
                    "a worker may report only about itself",
                ))
            };
        }
        (
            Who::Registrant,
            Caller::Worker {
                party, worker_id, ..
            },
        ) => {
            // A registered worker registers itself again (after the operator restarted or
            // its link dropped) with its own credential.
            return if target.party == Some(party.as_str())
                && target.worker_id == Some(worker_id.as_str())
            {
                Ok(())
            } else {
                Err(not_owner(
                    caller,
                    op,
                    "a worker's credential registers only that worker of its party",
                ))
            };
        }
        (Who::Registrant, Caller::Registrant { party }) => {
            return if target.party == Some(party.as_str()) {
                Ok(())
            } else {
                Err(not_owner(
                    caller,
                    op,
                    "the registration token was issued for another party",
                ))
            };
        }
        (Who::Worker, _) => return Err(role_denied("a registered worker's credential".into())),
        (Who::Registrant, _) => {
            return Err(role_denied("a party's registration token".into()));
        }
        (_, Caller::Worker { .. } | Caller::Registrant { .. }) => {
            return Err(role_denied("a user's API token".into()));
        }
        (Who::Operator, Caller::User(p)) if p.is_operator() => return Ok(()),
        (Who::Operator, Caller::User(_)) => return Err(role_denied("the operator role".into())),
        (Who::AnyUser, Caller::User(p)) => (p, true),
        (Who::Roles(roles), Caller::User(p)) if p.roles.any(roles) || p.is_operator() => (p, true),
        (Who::Roles(roles), Caller::User(_)) => {
            return Err(role_denied(format!("the {} role", names(roles))));
        }
        (Who::OnlyRoles(roles), Caller::User(p)) if p.roles.any(roles) => (p, false),
        (Who::OnlyRoles(roles), Caller::User(_)) => {
            return Err(role_denied(format!("the {} role", names(roles))));
        }
    };
    if operator_passes && principal.is_operator() {
        return Ok(());
    }
    let me = principal.user.as_str();
    let ok = match r.scope {
        Scope::Global | Scope::OwnRows => true,
        Scope::OwnUser => target.user == Some(me),
        Scope::Deposit => target.user == Some(me) && !target.voucher,
        Scope::OwnParty => target.party_owner == Some(me),
        Scope::LicenceParty => {
            target.licensor_owner == Some(me)
                || target
                    .licensee
                    .is_some_and(|l| principal.is_or_belongs_to(l))
        }
        Scope::JobParty => target.job_buyer == Some(me) || target.licensor_owner == Some(me),
        Scope::JobBuyer => target.job_buyer == Some(me),
        Scope::Submission => {
            return submission(principal, target).map_err(|why| not_owner(caller, op, why));
        }
        Scope::OwnWorker | Scope::RegistrationParty => false,
    };
    if ok {
        Ok(())
    } else {
        Err(not_owner(caller, op, scope_words(r.scope)))
    }
}

fn submission(p: &Principal, t: &Target<'_>) -> Result<(), &'static str> {
    if t.user != Some(p.user.as_str()) {
        return Err("a job is submitted only as oneself");
    }
    if !t.licensee.is_some_and(|l| p.is_or_belongs_to(l)) {
        return Err("the licence is not licensed to the caller or one of its groups");
    }
    if t.buyer_party_owner != Some(p.user.as_str()) {
        return Err("the buyer party is not the caller's");
    }
    if !t.dataset_in_buyer_party {
        return Err("the buyer dataset is not the buyer party's");
    }
    Ok(())
}

fn scope_words(scope: Scope) -> &'static str {
    match scope {
        Scope::OwnUser => "it acts only for itself",
        Scope::Deposit => "a customer deposits cash for itself only; vouchers are the operator's",
        Scope::OwnParty => "the party is not the caller's",
        Scope::LicenceParty => "the caller is neither the licence's provider nor its licensee",
        Scope::JobParty => "the caller is neither the job's buyer nor its provider",
        Scope::JobBuyer => "only the job's buyer may",
        _ => "not permitted",
    }
}

fn not_owner(caller: &Caller, op: Operation, why: &'static str) -> Denied {
    Denied::NotOwner {
        caller: caller.describe(),
        operation: op.name(),
        why,
    }
}

#[cfg(test)]
mod tests;
