//! The Introspection API: which plugins containerd runs and what they export.

use containerd_client::services::v1::{PluginsRequest, introspection_client::IntrospectionClient};
use speil_core::containerd_config::IntrospectedPlugin;
use speil_driver::Runtime;

use crate::client::Containerd;
use crate::error::{Error, Result};

impl<R: Runtime> Containerd<R> {
    /// `Introspection/Plugins` with `filters` (containerd's filter syntax, e.g. `id==images`;
    /// a plugin matching any filter is listed): each plugin's type, id, exports, requirements
    /// and capabilities.
    pub async fn introspection_plugins(&self, filters: &[&str]) -> Result<Vec<IntrospectedPlugin>> {
        let mut client = IntrospectionClient::new(self.channel());
        let resp = client
            .plugins(PluginsRequest {
                filters: filters.iter().map(|f| f.to_string()).collect(),
            })
            .await
            .map_err(Error::rpc("introspection.Plugins"))?;
        Ok(resp
            .into_inner()
            .plugins
            .into_iter()
            .map(|p| IntrospectedPlugin {
                plugin_type: p.r#type,
                id: p.id,
                exports: p.exports.into_iter().collect(),
                requires: p.requires,
                capabilities: p.capabilities,
            })
            .collect())
    }
}
