//! [`Routes`]: the HTTP/3 listener's top-level handler. One listener serves the provider's own
//! clients and its peers (MIMI.md §3.1); the path decides who answers:
//!
//! | path | handler |
//! |---|---|
//! | `/.well-known/mimi-protocol-directory` | [`DirectoryDocument`] (no client authentication) |
//! | `/v1/...` | [`FederationApi`] (mutual TLS, `From`, `Host`) |
//! | anything else | [`ClientApi`] (bearer tokens; it answers 404 outside `/client/v1/`) |

use super::api::PREFIX as S2S_PREFIX;
use super::directory::{DirectoryDocument, DIRECTORY_PATH};
use super::FederationApi;
use crate::api::ClientApi;
use crate::h3::{Handler, Request, Response};

/// Dispatches each request to the client API, the directory or the server-to-server API.
pub struct Routes {
    client: ClientApi,
    directory: DirectoryDocument,
    federation: FederationApi,
}

impl Routes {
    /// The listener's handler from its three parts.
    pub fn new(client: ClientApi, directory: DirectoryDocument, federation: FederationApi) -> Self {
        Routes {
            client,
            directory,
            federation,
        }
    }
}

impl Handler for Routes {
    fn handle(
        &self,
        req: Request,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send + '_>> {
        let path = req.uri.path();
        if path == DIRECTORY_PATH {
            self.directory.handle(req)
        } else if path.starts_with(S2S_PREFIX) {
            self.federation.handle(req)
        } else {
            self.client.handle(req)
        }
    }
}
