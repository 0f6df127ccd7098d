//! Errors a [`ServiceClient`](crate::ServiceClient) call fails with.

use std::{net::SocketAddr, sync::Arc};

use switchyard_transport::TransportError;

/// No endpoint of the service may take traffic: the set is empty, or every
/// endpoint is unhealthy or ejected. A gateway answers `503`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no healthy endpoint for service {service:?}")]
pub struct NoHealthyEndpoint {
    /// The service's name.
    pub service: Arc<str>,
}

/// Sending to the chosen endpoint failed. The [`TransportError`] source says
/// how (and whether a retry is safe: [`TransportError::is_connect`]).
#[derive(Debug, thiserror::Error)]
#[error("endpoint {endpoint} of service {service:?} failed")]
pub struct EndpointError {
    /// The service's name.
    pub service: Arc<str>,
    /// The endpoint the request went to.
    pub endpoint: SocketAddr,
    /// What went wrong on the wire.
    #[source]
    pub source: TransportError,
}
