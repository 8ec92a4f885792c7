//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations
//! and the request and response types, served at `GET /openapi.json`.
//!
//! Error responses are added here from one table ([`error_statuses`]) so that every
//! operation documents the statuses it can answer, each with the one error body of the
//! API. `api/tests/openapi.rs` fails when a route registered in the code is missing
//! from the document, or when a documented operation is not routed.

use std::borrow::Cow;

use axum::Json;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use crate::domain::{AssetName, ChannelName, EventCode, Uid, UidList};
use crate::routes::{admin, dapi, device, health};

/// The document: every route of the API process.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "dapi call backend",
        description = "App-to-app voice calls with a server-side robot: the `/dapi` contract \
            (SPEC.md), device registration for push, operator endpoints (`/admin`, \
            `Authorization: Bearer <DAPI_ADMIN_KEY>`), the agents' link (`/agent`, \
            `Authorization: Bearer <DAPI_AGENT_KEY>`), the `/rtc` signaling WebSocket, \
            health and metrics.\n\nWith `DAPI_AUTH=jwt` every `/dapi` request needs \
            `Authorization: Bearer <JWT>` whose `sub` is the request's uid; with \
            `DAPI_AUTH=open` (the default, as the original service) none is needed.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        dapi::call_user,
        dapi::call_robot,
        dapi::call_msg,
        dapi::call_token,
        dapi::call_event,
        dapi::call_heartbeat,
        dapi::call_timeline,
        dapi::invite_robot,
        dapi::quit_robot,
        dapi::calltask_update,
        dapi::calltask_list,
        dapi::calltask_delete,
        crate::routes::robot_control::robot_control,
        crate::routes::recordings::list,
        crate::routes::recordings::download,
        crate::routes::recordings::upload,
        device::register,
        device::unregister,
        health::healthz,
        health::readyz,
        health::metrics,
        crate::dispatch::agent_link::agent_ws,
        admin::agent_audio,
        admin::list_audio,
        admin::put_audio,
        admin::get_audio,
        admin::delete_audio,
        admin::list_sessions,
        admin::get_session,
        admin::list_agents,
        admin::drain_agent,
        admin::queue,
        crate::rtc::socket::rtc_ws,
        crate::rtc::demo_page,
        crate::rtc::demo_js,
        openapi_json,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Errors, &Security),
    tags(
        (name = "calls", description = "Calls, tokens, events and heartbeats (SPEC.md)"),
        (name = "robot", description = "The server-side robot (SPEC.md)"),
        (name = "tasks", description = "Scheduled calls (SPEC.md)"),
        (name = "devices", description = "Push registration (extension)"),
        (name = "admin", description = "Operator endpoints"),
        (name = "agents", description = "Robot agents' link"),
        (name = "rtc", description = "Channel signaling over WebSocket"),
        (name = "ops", description = "Health, readiness, metrics, this document"),
    )
)]
pub struct ApiDoc;

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub async fn openapi_json() -> impl IntoResponse {
    use std::sync::OnceLock;
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    Json(
        DOC.get_or_init(|| serde_json::to_value(ApiDoc::openapi()).unwrap_or_default())
            .clone(),
    )
}

/// The body of every error: `{"success": false, "data": null, "error": {...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always `false`.
    #[schema(value_type = bool, example = false)]
    pub success: bool,
    /// Always `null`.
    #[schema(schema_with = null_schema)]
    pub data: Null,
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong, for programs (`code`) and people (`message`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable snake_case code: `invalid_json`, `missing_field`, `invalid_field`,
    /// `unknown_audio`, `invalid_audio`, `not_found`, `conflict`, `payload_too_large`,
    /// `unauthorized`, `forbidden`, `rate_limited`, `unavailable`, `method_not_allowed`.
    #[schema(example = "missing_field")]
    pub code: String,
    /// What to fix, naming the field.
    #[schema(example = "channel is required")]
    pub message: String,
}

/// JSON `null` (the `data` of answers without content).
#[derive(Debug, Clone, Copy, Default)]
pub struct Null;

impl Serialize for Null {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl PartialSchema for Null {
    fn schema() -> RefOr<Schema> {
        null_schema().into()
    }
}

impl ToSchema for Null {}

/// Raw bytes (an audio file): `{"type": "string", "format": "binary"}`.
#[derive(Debug)]
pub struct Binary;

impl PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Binary,
            )))
            .into()
    }
}

impl ToSchema for Binary {}

/// `{"type": "null"}`.
pub fn null_schema() -> Schema {
    ObjectBuilder::new().schema_type(Type::Null).into()
}

/// Declares `$name`, the success envelope `{"success": true, "data": $data}`.
#[macro_export]
macro_rules! envelope {
    ($(#[$doc:meta])* $name:ident, $data:ty) => {
        $(#[$doc])*
        #[derive(Debug, serde::Serialize, utoipa::ToSchema)]
        pub struct $name {
            /// Always `true`.
            #[schema(value_type = bool, example = true)]
            pub success: bool,
            /// The answer.
            pub data: $data,
        }

        impl $name {
            /// A successful answer carrying `data`.
            pub fn new(data: $data) -> axum::Json<Self> {
                axum::Json(Self { success: true, data })
            }
        }
    };
}

envelope!(
    /// A success without data: `{"success": true, "data": null}`.
    OkNull,
    Null
);

fn string(description: &str, pattern: &str, min: usize, max: usize, example: &str) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(Some(pattern))
        .min_length(Some(min))
        .max_length(Some(max))
        .examples([example])
        .into()
}

fn uid_schema() -> Schema {
    OneOfBuilder::new()
        .description(Some(
            "A user id: a string of 1-255 printable ASCII characters, or an integer (the \
             same user as its decimal string)",
        ))
        .item(string("uid as text", "^[ -~]{1,255}$", 1, 255, "1001"))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(i64::MIN))
                .maximum(Some(u64::MAX))
                .examples([1001]),
        )
        .into()
}

impl PartialSchema for Uid {
    fn schema() -> RefOr<Schema> {
        uid_schema().into()
    }
}
impl ToSchema for Uid {}

impl PartialSchema for UidList {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .description(Some(
                "Callees: an array of uids or a single uid (at most DAPI_MAX_DST_UIDS, \
                 default 50)",
            ))
            .item(ArrayBuilder::new().items(RefOr::Ref(Ref::from_schema_name("Uid"))))
            .item(RefOr::Ref(Ref::from_schema_name("Uid")))
            .into()
    }
}
impl ToSchema for UidList {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push(("Uid".into(), Uid::schema()));
    }
}

impl PartialSchema for ChannelName {
    fn schema() -> RefOr<Schema> {
        string(
            "A channel name: 1-64 characters of Agora's channel alphabet",
            r"^[A-Za-z0-9 !#$%&()+\-:;<=>.?@\[\]^_{|}~,]{1,64}$",
            1,
            64,
            "ch_4aY875LP4o",
        )
        .into()
    }
}
impl ToSchema for ChannelName {}

impl PartialSchema for AssetName {
    fn schema() -> RefOr<Schema> {
        string(
            "The name of an uploaded audio asset",
            "^[A-Za-z0-9_-]{1,64}$",
            1,
            64,
            "default",
        )
        .into()
    }
}
impl ToSchema for AssetName {}

impl PartialSchema for EventCode {
    fn schema() -> RefOr<Schema> {
        let codes: Vec<i64> = EventCode::ALL.iter().map(|c| c.code()).collect();
        OneOfBuilder::new()
            .description(Some(
                "1 connected, 2 ended, 1000 caller cancelled, 1001 no answer, 1002 caller \
                 saw the reject, 1003 callee rejected, 1006 callee saw the cancel, 1007 \
                 failed (an integer, or the same number as a string)",
            ))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .enum_values(Some(codes.clone())),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(codes.iter().map(|c| c.to_string()))),
            )
            .into()
    }
}
impl ToSchema for EventCode {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("EventCode")
    }
}

/// A uid as `call/msg` rows show it: a number when it is canonical digits, else a string.
pub fn uid_out_schema() -> Schema {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ObjectBuilder::new().schema_type(Type::Integer))
        .into()
}

/// Which error statuses each operation can answer, from its path and method.
pub fn error_statuses(path: &str, method: &HttpMethod) -> Vec<u16> {
    let mut v = Vec::new();
    if path.starts_with("/dapi/") {
        // Body or query errors; jwt mode: 401 without or with a bad token, 403 when the
        // uid is not the token's, or not a member of the channel.
        v.extend([400, 401, 403, 503]);
        if *method == HttpMethod::Post {
            v.push(413);
        }
        let channel = [
            "/dapi/call/token",
            "/dapi/call/event",
            "/dapi/call/heartbeat",
            "/dapi/call/timeline",
            "/dapi/invite/robot",
            "/dapi/quit/robot",
            "/dapi/robot/control",
            "/dapi/call/recordings",
            "/dapi/call/recording/{id}",
        ];
        let task = ["/dapi/calltask/update", "/dapi/calltask/delete"];
        if channel.contains(&path) || task.contains(&path) {
            v.push(404);
        }
        // A task that already fired; a uid at its robot limit (DAPI_ROBOTS_PER_UID); a
        // control the agent refused.
        if [
            "/dapi/calltask/update",
            "/dapi/call/robot",
            "/dapi/invite/robot",
            "/dapi/robot/control",
        ]
        .contains(&path)
        {
            v.push(409);
        }
        if path == "/dapi/robot/control" {
            v.push(504);
        }
        // Every write is rate limited (calls, tokens, writes); the two reads are not.
        if *method == HttpMethod::Post && path != "/dapi/calltask/list" {
            v.push(429);
        }
    } else if path.starts_with("/admin/") || path.starts_with("/agent") {
        // 401 without or with a wrong key; 403 while the key is not configured.
        v.extend([400, 401, 403, 404, 503]);
        if path.starts_with("/admin/audio/") && *method == HttpMethod::Put {
            v.push(413);
        }
        if path.starts_with("/agent/recordings/") {
            v.extend([409, 413]);
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

fn status_description(status: u16) -> &'static str {
    match status {
        400 => "The request is malformed; the message names the field",
        401 => "Missing or wrong credentials",
        403 => {
            "Not allowed (wrong uid for the token, not a member, device routes in open mode, or the key is not configured)"
        }
        404 => "The channel, task, asset, session or agent does not exist",
        409 => "The request conflicts with the current state",
        413 => "The body is larger than the configured limit",
        429 => "Rate limited; retry after the Retry-After header's seconds",
        504 => "The robot's agent did not answer in time (`agent_timeout`)",
        503 => "The database is unavailable; retry shortly (Retry-After: 1)",
        _ => "Error",
    }
}

struct Errors;

impl Modify for Errors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for (path, item) in doc.paths.paths.iter_mut() {
            let ops: [(HttpMethod, &mut Option<Operation>); 4] = [
                (HttpMethod::Get, &mut item.get),
                (HttpMethod::Post, &mut item.post),
                (HttpMethod::Put, &mut item.put),
                (HttpMethod::Delete, &mut item.delete),
            ];
            for (method, op) in ops {
                let Some(op) = op.as_mut() else { continue };
                if path.starts_with("/dapi/") {
                    // No credentials with DAPI_AUTH=open (the default), a JWT with jwt.
                    op.security = Some(vec![
                        SecurityRequirement::default(),
                        SecurityRequirement::new("app_jwt", Vec::<String>::new()),
                    ]);
                }
                for status in error_statuses(path, &method) {
                    let response = ResponseBuilder::new()
                        .description(status_description(status))
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody"))))
                                .build(),
                        )
                        .build();
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert(response.into());
                }
            }
        }
    }
}

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |desc: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(desc))
                    .build(),
            )
        };
        components.add_security_scheme(
            "app_jwt",
            bearer("DAPI_AUTH=jwt: a JWT from the app's backend whose `sub` is the uid"),
        );
        components.add_security_scheme("admin_key", bearer("DAPI_ADMIN_KEY"));
        components.add_security_scheme("agent_key", bearer("DAPI_AGENT_KEY"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_and_every_operation_has_a_success_response() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.len() >= 30, "{} paths", paths.len());
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                assert!(
                    responses.keys().any(|k| k.starts_with('2') || k == "101"),
                    "{method} {path} documents no success response"
                );
            }
        }
    }

    #[test]
    fn error_statuses_follow_the_route_kind() {
        assert!(error_statuses("/dapi/call/user", &HttpMethod::Post).contains(&429));
        assert!(!error_statuses("/dapi/call/msg", &HttpMethod::Post).contains(&404));
        assert!(error_statuses("/dapi/call/token", &HttpMethod::Post).contains(&404));
        assert!(error_statuses("/healthz", &HttpMethod::Get).is_empty());
        assert!(error_statuses("/admin/audio/{name}", &HttpMethod::Put).contains(&413));
    }
}
