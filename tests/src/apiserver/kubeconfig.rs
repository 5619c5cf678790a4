//! A kubeconfig for the stand-in, so clients are configured exactly as they
//! are against a real cluster.

/// One cluster reached over plain HTTP (no TLS settings needed), one user
/// authenticating with a bearer token, and a context tying them together.
pub fn render(server_url: &str, token: &str) -> String {
    format!(
        "\
apiVersion: v1
kind: Config
clusters:
- name: lb-tests
  cluster:
    server: \"{server_url}\"
users:
- name: lb-tests
  user:
    token: \"{token}\"
contexts:
- name: lb-tests
  context:
    cluster: lb-tests
    user: lb-tests
    namespace: default
current-context: lb-tests
preferences: {{}}
"
    )
}
