//! The stream layer's view of federation policy: whether a remote domain may federate with a
//! local one in a direction, and the transport/authentication floor that applies to it. The
//! root crate implements [`Gatekeeper`] from the policy file; [`Open`] is the config-only one.

use crate::inbound::{AuthMethod, AuthMethods};

/// What must hold for streams with one remote domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Floor {
    pub tls_required: bool,
    pub auth: AuthMethods,
    /// SHA-256 certificate fingerprints (hex, colons and a `sha256:` prefix optional) one of
    /// which the peer's certificate must have.
    pub pins: Vec<String>,
    /// Most concurrent inbound streams from the domain.
    pub max_streams: Option<u32>,
    /// The rule that set the floor, for error texts.
    pub rule: Option<String>,
}

/// Which certificate-based methods may establish a remote domain's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertMethods {
    pub pkix: bool,
    pub dane: bool,
    pub posh: bool,
}

impl CertMethods {
    pub const ALL: Self = Self {
        pkix: true,
        dane: true,
        posh: true,
    };

    pub fn allows(self, m: AuthMethod) -> bool {
        match m {
            AuthMethod::Pkix => self.pkix,
            AuthMethod::Dane => self.dane,
            AuthMethod::Posh => self.posh,
            AuthMethod::Dialback => false,
        }
    }
}

pub trait Gatekeeper: Send + Sync + 'static {
    /// May `remote` federate with `local` (`inbound`: the remote side initiated)? `Err` carries
    /// a text naming the deciding rule (it goes into stream errors and logs).
    fn admit(&self, remote: &str, local: &str, inbound: bool) -> Result<(), String>;

    /// The floor for `remote` in a direction.
    fn floor(&self, remote: &str, inbound: bool) -> Floor;

    /// Which certificate methods may prove `remote`'s identity (all unless the policy narrows
    /// them, e.g. to `pkix` or `dane`).
    fn cert_methods(&self, _remote: &str, _inbound: bool) -> CertMethods {
        CertMethods::ALL
    }

    /// A verifier with trust anchors for `remote` alone (per-partner trust from the policy);
    /// `None`: the gateway's anchors.
    fn verifier(&self, _remote: &str) -> Option<std::sync::Arc<fedgate_certs::PeerVerifier>> {
        None
    }
}

/// Everyone may federate; the floor is the gateway's global setting.
pub struct Open(pub Floor);

impl Gatekeeper for Open {
    fn admit(&self, _: &str, _: &str, _: bool) -> Result<(), String> {
        Ok(())
    }

    fn floor(&self, _: &str, _: bool) -> Floor {
        self.0.clone()
    }
}
