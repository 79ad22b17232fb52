//! Per-principal access control (issue 14), enforced only when TLS is on (without TLS there is
//! no authenticated caller; the broker behaves as before).
//!
//! The caller is the [`Principal`] of its client certificate; its role decides what it may do
//! ([`allowed`], a pure table with unit tests):
//!
//! | role                 | may                                                              |
//! |----------------------|------------------------------------------------------------------|
//! | `producer`           | Produce (and InitProducer) on `transactions` and `labels`;       |
//! |                      | GetStream on them (the producer's leader probe)                  |
//! | `worker`             | Consume `transactions` (with its acks and nacks); Produce on     |
//! |                      | `decisions` and `transactions.dlq`; GetStream on these three     |
//! | `reader`, `audit`    | Fetch, GetStream, ListStreams on every stream                    |
//! | `ledger`             | every `txpipe.ledger.v1` call                                    |
//! | `broker`             | every `txpipe.raft.v1.RaftPeer` call; Produce on dead-letter     |
//! |                      | streams (`*.dlq`, forwarded by a follower to the leader); the    |
//! |                      | ledger calls of cross-shard recovery (GetShard, CreateTransfers, |
//! |                      | ListOpenCrossTransfers, DecideCrossTransfer,                     |
//! |                      | CompleteCrossTransfer)                                           |
//! | `operator`           | everything, including the mutating admin HTTP requests           |
//! |                      | (`POST /cluster/voters`, `PUT /failpoints/{name}`), which no     |
//! |                      | other role may make (brokers never call each other's admin port) |
//!
//! Any other role is authenticated but may do nothing. A call without a principal is refused
//! with UNAUTHENTICATED, a call the role does not allow with PERMISSION_DENIED naming the
//! principal and the operation. `grpc.health.v1` and reflection are not checked (they hold
//! no data; TLS still requires a certificate of the cluster CA to reach them).

use std::fmt;

use tonic::{Request, Status};
use txpipe_client::streams;

use crate::tls::Principal;

/// What a call does, as the access table sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Produce or InitProducer on a stream.
    Produce,
    /// Consume a work-queue stream (subscribe, ack, nack, window changes).
    Consume,
    /// Fetch records of a stream.
    Fetch,
    /// GetStream.
    GetStream,
    /// ListStreams.
    ListStreams,
    /// A `txpipe.ledger.v1` call (its RPC name).
    Ledger(&'static str),
    /// A `txpipe.raft.v1.RaftPeer` call (its RPC name).
    Peer(&'static str),
    /// A mutating request on the admin HTTP port (method and route, e.g.
    /// `POST /cluster/voters`); operator only.
    Admin(&'static str),
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::Produce => f.write_str("Produce"),
            Operation::Consume => f.write_str("Consume"),
            Operation::Fetch => f.write_str("Fetch"),
            Operation::GetStream => f.write_str("GetStream"),
            Operation::ListStreams => f.write_str("ListStreams"),
            Operation::Ledger(rpc) => write!(f, "Ledger/{rpc}"),
            Operation::Peer(rpc) => write!(f, "RaftPeer/{rpc}"),
            Operation::Admin(route) => f.write_str(route),
        }
    }
}

/// The roles the table knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Writes transactions and labels.
    Producer,
    /// Scores transactions and writes decisions.
    Worker,
    /// Reads (`reader` or `audit`).
    Reader,
    /// Uses the ledger API.
    Ledger,
    /// Another broker of the cluster.
    Broker,
    /// The operator or an administrator: everything.
    Operator,
}

impl Role {
    /// The role named `s`, `None` for a role the table does not know.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "producer" => Role::Producer,
            "worker" => Role::Worker,
            "reader" | "audit" => Role::Reader,
            "ledger" => Role::Ledger,
            "broker" => Role::Broker,
            "operator" => Role::Operator,
            _ => return None,
        })
    }
}

/// True when a dead-letter stream (by the `<stream>.dlq` convention of the standard streams).
fn is_dead_letter(stream: &str) -> bool {
    stream.ends_with(".dlq")
}

/// The ledger calls a broker's recovery task makes to finish cross-shard transfers
/// (`ledger_service::recover_cross_transfers`, through a ledger client with the broker's
/// own certificate).
const RECOVERY_CALLS: &[&str] = &[
    "GetShard",
    "CreateTransfers",
    "ListOpenCrossTransfers",
    "DecideCrossTransfer",
    "CompleteCrossTransfer",
];

/// The access table: may `role` do `op` on `stream` (empty for calls about no stream)?
pub fn allowed(role: Role, op: Operation, stream: &str) -> bool {
    use Operation as O;
    match role {
        Role::Operator => true,
        Role::Producer => {
            matches!(op, O::Produce | O::GetStream)
                && (stream == streams::TRANSACTIONS || stream == streams::LABELS)
        }
        Role::Worker => match op {
            O::Consume => stream == streams::TRANSACTIONS,
            O::Produce => stream == streams::DECISIONS || stream == streams::TRANSACTIONS_DLQ,
            O::GetStream => {
                stream == streams::TRANSACTIONS
                    || stream == streams::DECISIONS
                    || stream == streams::TRANSACTIONS_DLQ
            }
            _ => false,
        },
        Role::Reader => matches!(op, O::Fetch | O::GetStream | O::ListStreams),
        Role::Ledger => matches!(op, O::Ledger(_)),
        Role::Broker => {
            matches!(op, O::Peer(_))
                || (op == O::Produce && is_dead_letter(stream))
                || matches!(op, O::Ledger(rpc) if RECOVERY_CALLS.contains(&rpc))
        }
    }
}

/// The access check of a service: off (plaintext broker) or enforced (TLS broker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Acl {
    enforced: bool,
}

impl Acl {
    /// An enforced check when `enforced` (TLS on), else one that allows every call.
    pub fn new(enforced: bool) -> Self {
        Self { enforced }
    }

    /// True when calls are checked.
    pub fn enforced(&self) -> bool {
        self.enforced
    }

    /// The caller of `req`: `None` when not enforced.
    ///
    /// Errors: UNAUTHENTICATED when enforced and the request carries no principal.
    pub fn principal<T>(&self, req: &Request<T>) -> Result<Option<Principal>, Status> {
        if !self.enforced {
            return Ok(None);
        }
        match Principal::of(req) {
            Some(p) => Ok(Some(p)),
            None => Err(Status::unauthenticated(
                "no principal: present a client certificate with a URI SAN spiffe://txpipe/<role>",
            )),
        }
    }

    /// May `principal` (from [`Acl::principal`]) do `op` on `stream`? Always yes when not
    /// enforced.
    ///
    /// Errors: UNAUTHENTICATED when enforced without a principal; PERMISSION_DENIED naming
    /// the principal, the operation and the stream.
    pub fn authorize(
        &self,
        principal: Option<&Principal>,
        op: Operation,
        stream: &str,
    ) -> Result<(), Status> {
        if !self.enforced {
            return Ok(());
        }
        let Some(p) = principal else {
            return Err(Status::unauthenticated(format!(
                "{op}: no principal: present a client certificate with a URI SAN spiffe://txpipe/<role>"
            )));
        };
        if Role::parse(&p.role).is_some_and(|r| allowed(r, op, stream)) {
            return Ok(());
        }
        let what = if stream.is_empty() {
            format!("call {op}")
        } else {
            format!("{op} on stream {stream:?}")
        };
        tracing::info!(principal = %p, operation = %op, stream, "permission denied");
        Err(Status::permission_denied(format!("{p} may not {what}")))
    }

    /// [`Acl::principal`] then [`Acl::authorize`] for one call.
    ///
    /// Errors: as those two.
    pub fn check<T>(&self, req: &Request<T>, op: Operation, stream: &str) -> Result<(), Status> {
        let p = self.principal(req)?;
        self.authorize(p.as_ref(), op, stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Operation as O;

    #[test]
    fn the_table_gives_each_role_only_its_operations() {
        let cases: &[(Role, Operation, &str, bool)] = &[
            (Role::Producer, O::Produce, "transactions", true),
            (Role::Producer, O::Produce, "labels", true),
            (Role::Producer, O::Produce, "decisions", false),
            (Role::Producer, O::Consume, "transactions", false),
            (Role::Producer, O::Fetch, "transactions", false),
            (Role::Producer, O::GetStream, "transactions", true),
            (Role::Producer, O::GetStream, "decisions", false),
            (Role::Worker, O::GetStream, "decisions", true),
            (Role::Worker, O::GetStream, "labels", false),
            (Role::Worker, O::Consume, "transactions", true),
            (Role::Worker, O::Produce, "decisions", true),
            (Role::Worker, O::Produce, "transactions.dlq", true),
            (Role::Worker, O::Produce, "transactions", false),
            (Role::Worker, O::Consume, "decisions", false),
            (Role::Worker, O::Peer("Join"), "", false),
            (Role::Reader, O::Fetch, "decisions", true),
            (Role::Reader, O::GetStream, "transactions", true),
            (Role::Reader, O::ListStreams, "", true),
            (Role::Reader, O::Produce, "labels", false),
            (Role::Reader, O::Consume, "transactions", false),
            (Role::Ledger, O::Ledger("CreateTransfers"), "", true),
            (Role::Ledger, O::Ledger("BeginCrossTransfer"), "", true),
            (Role::Broker, O::Ledger("DecideCrossTransfer"), "", true),
            (Role::Broker, O::Ledger("CreateTransfers"), "", true),
            (Role::Broker, O::Ledger("BeginCrossTransfer"), "", false),
            (Role::Broker, O::Ledger("CreateAccounts"), "", false),
            (Role::Reader, O::Ledger("ListOpenCrossTransfers"), "", false),
            (Role::Ledger, O::Produce, "transactions", false),
            (Role::Broker, O::Peer("Join"), "", true),
            (Role::Broker, O::Peer("AppendEntries"), "", true),
            (Role::Broker, O::Produce, "transactions.dlq", true),
            (Role::Broker, O::Produce, "decisions", false),
            (Role::Operator, O::Peer("Join"), "", true),
            (Role::Operator, O::Produce, "decisions", true),
            (Role::Operator, O::Admin("POST /cluster/voters"), "", true),
            (Role::Broker, O::Admin("POST /cluster/voters"), "", false),
            (Role::Producer, O::Admin("POST /cluster/voters"), "", false),
            (Role::Reader, O::Admin("PUT /failpoints/{name}"), "", false),
        ];
        for &(role, op, stream, want) in cases {
            assert_eq!(allowed(role, op, stream), want, "{role:?} {op} {stream:?}");
        }
    }

    #[test]
    fn roles_parse_with_audit_as_a_reader_and_unknown_roles_as_none() {
        assert_eq!(Role::parse("audit"), Some(Role::Reader));
        assert_eq!(Role::parse("broker"), Some(Role::Broker));
        assert_eq!(Role::parse("admin"), None);
    }

    #[test]
    fn an_enforced_acl_names_the_principal_and_the_operation_when_it_refuses() {
        let acl = Acl::new(true);
        let p = Principal::from_uri("spiffe://txpipe/producer/p-1").unwrap();
        let e = acl
            .authorize(Some(&p), O::Produce, "decisions")
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            e.message(),
            "spiffe://txpipe/producer/p-1 may not Produce on stream \"decisions\""
        );
        let e = acl.authorize(None, O::Fetch, "labels").unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let unknown = Principal::from_uri("spiffe://txpipe/admin").unwrap();
        let e = acl
            .authorize(Some(&unknown), O::Peer("Join"), "")
            .unwrap_err();
        assert_eq!(
            e.message(),
            "spiffe://txpipe/admin may not call RaftPeer/Join"
        );
        assert!(Acl::new(false).authorize(None, O::Peer("Join"), "").is_ok());
        assert!(
            Acl::new(false)
                .principal(&Request::new(()))
                .unwrap()
                .is_none()
        );
    }
}
