//! Audio assets: the prepared audio robots play, stored whole (content and its record) and
//! read in slices (`asset_slice`, so a download streams from the first bytes instead of
//! waiting for a 30 MB blob to be read).

use serde::Serialize;

use super::db::Stmt;
use super::{Store, StoreResult};

/// A stored audio asset (without its content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AssetRecord {
    /// Name (`[A-Za-z0-9_-]{1,64}`).
    pub name: String,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: i64,
    /// Decoded duration, ms.
    pub duration_ms: i64,
    /// Upload time, unix ms.
    pub created_at_ms: i64,
}

/// The columns of an asset row, in the order [`AssetRecord`] reads them.
type AssetRow = (String, String, i64, i64, i64);

impl From<AssetRow> for AssetRecord {
    fn from((name, sha256, bytes, duration_ms, created_at_ms): AssetRow) -> Self {
        Self {
            name,
            sha256,
            bytes,
            duration_ms,
            created_at_ms,
        }
    }
}

mod sql {
    use super::Stmt;

    pub const PUT_ASSET: Stmt = Stmt::both(
        "INSERT INTO audio_assets (name, content, sha256, bytes, duration_ms, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO UPDATE SET content = excluded.content, \
         sha256 = excluded.sha256, bytes = excluded.bytes, duration_ms = excluded.duration_ms, created_at = excluded.created_at",
    );
    pub const GET_RECORD: Stmt = Stmt::both(
        "SELECT name, sha256, bytes, duration_ms, created_at FROM audio_assets WHERE name = $1",
    );
    // substr on a blob/bytea counts bytes, from 1, on both backends; the sha256 filter
    // makes a slice of content replaced since the download began come back empty.
    pub const GET_SLICE: Stmt = Stmt::both(
        "SELECT substr(content, CAST($2 AS INTEGER), CAST($3 AS INTEGER)) FROM audio_assets \
         WHERE name = $1 AND sha256 = $4",
    );
    pub const LIST_ASSETS: Stmt = Stmt::both(
        "SELECT name, sha256, bytes, duration_ms, created_at FROM audio_assets ORDER BY name",
    );
    pub const ASSET_EXISTS: Stmt = Stmt::both("SELECT COUNT(*) FROM audio_assets WHERE name = $1");
    pub const DELETE_ASSET: Stmt = Stmt::both("DELETE FROM audio_assets WHERE name = $1");
}

impl Store {
    /// Stores or replaces an audio asset.
    pub async fn put_asset(&self, a: &AssetRecord, content: &[u8]) -> StoreResult<()> {
        let q = sql::PUT_ASSET
            .bind(&a.name)
            .bind(content)
            .bind(&a.sha256)
            .bind(a.bytes)
            .bind(a.duration_ms)
            .bind(a.created_at_ms);
        self.write_one("put_asset", q).await?;
        Ok(())
    }

    /// An asset's record, without its content.
    pub async fn asset_record(&self, name: &str) -> StoreResult<Option<AssetRecord>> {
        let row: Option<AssetRow> = sql::GET_RECORD
            .bind(name)
            .fetch_optional(self.reader())
            .await?;
        Ok(row.map(AssetRecord::from))
    }

    /// `len` bytes of an asset's content from byte `offset` (from 0), as long as its content
    /// still has the SHA-256 `sha256` (hex); `None` when the asset is gone or was replaced.
    /// Shorter than `len` at the end of the content.
    pub async fn asset_slice(
        &self,
        name: &str,
        sha256: &str,
        offset: u64,
        len: u64,
    ) -> StoreResult<Option<Vec<u8>>> {
        let start = i64::try_from(offset).unwrap_or(i64::MAX).saturating_add(1);
        let len = i64::try_from(len).unwrap_or(i64::MAX);
        let q = sql::GET_SLICE.bind(name).bind(start).bind(len).bind(sha256);
        Ok(q.scalar_optional::<Vec<u8>>(self.reader()).await?)
    }

    /// Every asset.
    pub async fn list_assets(&self) -> StoreResult<Vec<AssetRecord>> {
        let rows: Vec<AssetRow> = sql::LIST_ASSETS.query().fetch_all(self.reader()).await?;
        Ok(rows.into_iter().map(AssetRecord::from).collect())
    }

    /// Whether an asset exists.
    pub async fn asset_exists(&self, name: &str) -> StoreResult<bool> {
        let n: i64 = sql::ASSET_EXISTS
            .bind(name)
            .scalar_one(self.reader())
            .await?;
        Ok(n > 0)
    }

    /// Deletes an asset; false if there was none.
    pub async fn delete_asset(&self, name: &str) -> StoreResult<bool> {
        let n = self
            .write_one("delete_asset", sql::DELETE_ASSET.bind(name))
            .await?;
        Ok(n == 1)
    }
}
