//! Version 3: the server API's JSON shapes (`/api/v1`, for the integrator's backend).

use serde::{Deserialize, Serialize};

use crate::{Ident, Role, Seat, UserInfo};

/// A live room as the live list shows it (`GET /api/v1/rooms`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSummary {
    pub room: Ident,
    pub anchor: UserInfo,
    /// Unix milliseconds.
    pub started_at: u64,
    pub audience_count: u32,
    /// Seated members other than the anchor, in seat order.
    pub linked: Vec<UserInfo>,
    pub metadata: String,
    /// The other rooms of its co-host group.
    #[serde(default)]
    pub cohost: Vec<Ident>,
    /// Its battle, if one is on.
    #[serde(default)]
    pub battle: Option<String>,
}

/// One room in full (`GET /api/v1/rooms/{room}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomDetail {
    #[serde(flatten)]
    pub summary: RoomSummary,
    pub seats: Vec<Seat>,
    /// The first 1,000 viewers, in join order.
    pub viewers: Vec<UserInfo>,
}

/// `GET /api/v1/rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomList {
    pub rooms: Vec<RoomSummary>,
    /// Added to the contract: nodes of the cluster that did not list their rooms in time (the
    /// list is then partial; absent when every node answered).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_nodes: Vec<String>,
}

/// A refusal: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: ApiErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub code: String,
    pub message: String,
}

/// A role a token may name: a member's, or the server API's caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    Anchor,
    Audience,
    Admin,
}

impl TokenRole {
    /// The member role, for a join token.
    pub fn member(self) -> Option<Role> {
        match self {
            TokenRole::Anchor => Some(Role::Anchor),
            TokenRole::Audience => Some(Role::Audience),
            TokenRole::Admin => None,
        }
    }
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    pub room: Ident,
    pub user: Ident,
    pub role: Role,
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

/// The answer to `POST /api/v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResult {
    pub token: String,
}
