//! `spire.api.server.entry.v1.Entry` (admin half; the agent half comes with the agent issue).

use super::convert::{entry_from_proto, entry_to_proto};
use super::status::{ApiError, ok_status};
use super::{Policy, Svc, now};
use crate::datastore::{Entry, EntryFilter};
use crate::wire::convert::{id_from_proto, selector_from_proto};
use crate::wire::pb::spire::api::server::entry::v1 as pb;
use crate::wire::pb::spire::api::types as pt;
use tonic::{Request, Response, Status, Streaming};

/// Most entries one page returns when the caller does not say.
const DEFAULT_PAGE: usize = 500;

/// What ListEntries/CountEntries filter on beyond what the datastore indexes: selectors and
/// federated trust domains (each with SPIRE's match behaviour) and the hint.
#[derive(Default)]
struct ExtraFilter {
    selectors: Option<(Vec<crate::datastore::Selector>, i32)>,
    federates_with: Option<(Vec<crate::spiffe::TrustDomain>, i32)>,
    hint: Option<String>,
}

/// The request filter's fields, from either request type (their Filter messages are twins).
struct FilterFields<'a> {
    by_spiffe_id: Option<&'a pt::Spiffeid>,
    by_parent_id: Option<&'a pt::Spiffeid>,
    by_selectors: Option<&'a pt::SelectorMatch>,
    by_federates_with: Option<&'a pt::FederatesWithMatch>,
    by_hint: Option<&'a String>,
    by_downstream: Option<bool>,
}

fn filter_from(fl: &FilterFields<'_>) -> Result<(EntryFilter, ExtraFilter), ApiError> {
    // SPIRE filters on downstream only when asked for downstream entries; `false` is no filter.
    let mut f = EntryFilter { downstream: fl.by_downstream.filter(|d| *d), ..EntryFilter::default() };
    if let Some(id) = fl.by_spiffe_id {
        f.spiffe_id = Some(id_from_proto(Some(id), "spiffe ID filter")?);
    }
    if let Some(id) = fl.by_parent_id {
        f.parent_id = Some(id_from_proto(Some(id), "parent ID filter")?);
    }
    let mut extra = ExtraFilter::default();
    if let Some(m) = fl.by_selectors {
        if m.selectors.is_empty() {
            return Err(ApiError::InvalidArgument("malformed selectors filter: empty selector set".into()));
        }
        let sel = m.selectors.iter().map(selector_from_proto).collect::<Result<Vec<_>, _>>()?;
        extra.selectors = Some((sel, m.r#match));
    }
    if let Some(m) = fl.by_federates_with {
        if m.trust_domains.is_empty() {
            return Err(ApiError::InvalidArgument("malformed federates with filter: empty trust domain set".into()));
        }
        let tds = m
            .trust_domains
            .iter()
            .map(|t| {
                crate::spiffe::TrustDomain::new(t).map_err(|e| ApiError::InvalidArgument(format!("malformed federates with filter: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        extra.federates_with = Some((tds, m.r#match));
    }
    extra.hint = fl.by_hint.filter(|h| !h.is_empty()).cloned();
    Ok((f, extra))
}

/// SPIRE's match behaviours (exact, subset, superset, any) of a wanted set against an entry's.
pub(super) fn set_match<T: PartialEq + Ord + Clone>(have: &[T], wanted: &[T], behaviour: i32) -> bool {
    use pt::selector_match::MatchBehavior as B;
    match B::try_from(behaviour).unwrap_or(B::MatchExact) {
        B::MatchExact => {
            let mut w = wanted.to_vec();
            w.sort();
            w.dedup();
            let mut h = have.to_vec();
            h.sort();
            h.dedup();
            w == h
        }
        B::MatchSubset => have.iter().all(|s| wanted.contains(s)),
        B::MatchSuperset => wanted.iter().all(|s| have.contains(s)),
        B::MatchAny => wanted.iter().any(|s| have.contains(s)),
    }
}

/// Clears what an output mask leaves out (the ID is always returned), as SPIRE's applyMask.
fn masked(mut e: pt::Entry, mask: Option<&pt::EntryMask>) -> pt::Entry {
    let Some(m) = mask else { return e };
    if !m.spiffe_id {
        e.spiffe_id = None;
    }
    if !m.parent_id {
        e.parent_id = None;
    }
    if !m.selectors {
        e.selectors.clear();
    }
    if !m.x509_svid_ttl {
        e.x509_svid_ttl = 0;
    }
    if !m.jwt_svid_ttl {
        e.jwt_svid_ttl = 0;
    }
    if !m.federates_with {
        e.federates_with.clear();
    }
    if !m.admin {
        e.admin = false;
    }
    if !m.downstream {
        e.downstream = false;
    }
    if !m.expires_at {
        e.expires_at = 0;
    }
    if !m.dns_names {
        e.dns_names.clear();
    }
    if !m.revision_number {
        e.revision_number = 0;
    }
    if !m.store_svid {
        e.store_svid = false;
    }
    if !m.hint {
        e.hint.clear();
    }
    if !m.created_at {
        e.created_at = 0;
    }
    if !m.additional_attributes {
        e.additional_attributes = None;
    }
    e
}

impl ExtraFilter {
    fn keeps(&self, e: &Entry) -> bool {
        self.selectors.as_ref().is_none_or(|(w, b)| set_match(&e.selectors, w, *b))
            // As in SPIRE's datastore, an entry that federates with nothing matches no
            // federates-with filter (not even "subset").
            && self.federates_with.as_ref().is_none_or(|(w, b)| !e.federates_with.is_empty() && set_match(&e.federates_with, w, *b))
            && self.hint.as_ref().is_none_or(|h| e.hint == *h)
    }
}

impl Svc {
    async fn filtered_entries(&self, f: EntryFilter, extra: ExtraFilter) -> Result<Vec<Entry>, ApiError> {
        let mut entries = self.state().datastore.list_entries(&f).await?;
        entries.retain(|e| extra.keeps(e));
        Ok(entries)
    }
}

#[tonic::async_trait]
impl pb::entry_server::Entry for Svc {
    async fn count_entries(&self, req: Request<pb::CountEntriesRequest>) -> Result<Response<pb::CountEntriesResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.entry.v1.Entry/CountEntries").await?;
        let count = match &req.get_ref().filter {
            None => self.state().datastore.count_entries().await.map_err(ApiError::from)?,
            Some(fl) => {
                let (f, extra) = filter_from(&FilterFields {
                    by_spiffe_id: fl.by_spiffe_id.as_ref(),
                    by_parent_id: fl.by_parent_id.as_ref(),
                    by_selectors: fl.by_selectors.as_ref(),
                    by_federates_with: fl.by_federates_with.as_ref(),
                    by_hint: fl.by_hint.as_ref(),
                    by_downstream: fl.by_downstream,
                })?;
                i64::try_from(self.filtered_entries(f, extra).await?.len()).unwrap_or(i64::MAX)
            }
        };
        Ok(Response::new(pb::CountEntriesResponse { count: i32::try_from(count).unwrap_or(i32::MAX) }))
    }

    async fn list_entries(&self, req: Request<pb::ListEntriesRequest>) -> Result<Response<pb::ListEntriesResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.entry.v1.Entry/ListEntries").await?;
        let r = req.get_ref();
        if r.page_size < 0 {
            return Err(ApiError::InvalidArgument("page_size must not be negative".into()).into());
        }
        let (f, extra) = match &r.filter {
            Some(fl) => filter_from(&FilterFields {
                by_spiffe_id: fl.by_spiffe_id.as_ref(),
                by_parent_id: fl.by_parent_id.as_ref(),
                by_selectors: fl.by_selectors.as_ref(),
                by_federates_with: fl.by_federates_with.as_ref(),
                by_hint: fl.by_hint.as_ref(),
                by_downstream: fl.by_downstream,
            })?,
            None => (EntryFilter::default(), ExtraFilter::default()),
        };
        let entries = self.filtered_entries(f, extra).await?;
        // Page tokens are offsets into the id-ordered list.
        let start: usize = if r.page_token.is_empty() {
            0
        } else {
            r.page_token.parse().map_err(|_| ApiError::InvalidArgument("could not parse page token".into()))?
        };
        let size = if r.page_size == 0 { usize::MAX } else { usize::try_from(r.page_size).unwrap_or(DEFAULT_PAGE) };
        let page: Vec<pt::Entry> =
            entries.iter().skip(start).take(size).map(|e| masked(entry_to_proto(e), r.output_mask.as_ref())).collect();
        let next = start.saturating_add(page.len());
        let next_page_token = if r.page_size > 0 && next < entries.len() { next.to_string() } else { String::new() };
        Ok(Response::new(pb::ListEntriesResponse { entries: page, next_page_token }))
    }

    async fn get_entry(&self, req: Request<pb::GetEntryRequest>) -> Result<Response<pt::Entry>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.entry.v1.Entry/GetEntry").await?;
        let id = &req.get_ref().id;
        if id.is_empty() {
            return Err(ApiError::InvalidArgument("missing ID".into()).into());
        }
        let e = self
            .state()
            .datastore
            .get_entry(id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound("entry not found".into()))?;
        Ok(Response::new(masked(entry_to_proto(&e), req.get_ref().output_mask.as_ref())))
    }

    async fn batch_create_entry(
        &self,
        req: Request<pb::BatchCreateEntryRequest>,
    ) -> Result<Response<pb::BatchCreateEntryResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.entry.v1.Entry/BatchCreateEntry").await?;
        let ds = &self.state().datastore;
        let mask = req.get_ref().output_mask.as_ref();
        // Checked one by one, then created together (one transaction for the batch), then
        // answered in request order.
        let mut checked: Vec<Result<crate::datastore::Entry, ApiError>> = Vec::with_capacity(req.get_ref().entries.len());
        let mut known_bundles: std::collections::HashMap<crate::spiffe::TrustDomain, bool> = std::collections::HashMap::new();
        for e in &req.get_ref().entries {
            let r: Result<crate::datastore::Entry, ApiError> = async {
                let entry = entry_from_proto(e, &self.state().trust_domain)?;
                for td in &entry.federates_with {
                    let exists = match known_bundles.get(td) {
                        Some(b) => *b,
                        None => {
                            let b = ds.get_bundle(td).await?.is_some();
                            known_bundles.insert(td.clone(), b);
                            b
                        }
                    };
                    if !exists {
                        return Err(ApiError::InvalidArgument(format!("failed to create entry: unable to find federated bundle {td:?}")));
                    }
                }
                Ok(entry)
            }
            .await;
            checked.push(r);
        }
        let valid: Vec<crate::datastore::Entry> = checked.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
        let mut created = ds.create_entries(&valid).await.into_iter();
        let mut results = Vec::with_capacity(checked.len());
        for (r, asked) in checked.into_iter().zip(&req.get_ref().entries) {
            let r: Result<pt::Entry, (ApiError, Option<pt::Entry>)> = match r {
                Err(e) => Err((e, None)),
                Ok(entry) => match created.next() {
                    Some(Ok(e)) => Ok(masked(entry_to_proto(&e), mask)),
                    // The store refuses a similar entry itself; only then is the existing one looked up.
                    Some(Err(crate::datastore::DatastoreError::AlreadyExists { what })) => {
                        let existing = ds.find_similar_entry(&entry).await.ok().flatten().map(|e| entry_to_proto(&e));
                        Err((ApiError::AlreadyExists(format!("{what} already exists")), existing))
                    }
                    Some(Err(e)) => Err((e.into(), None)),
                    None => {
                        Err((ApiError::Internal { public: "failed to create entry", detail: format!("no result for {}", asked.id) }, None))
                    }
                },
            };
            results.push(match r {
                Ok(e) => pb::batch_create_entry_response::Result { status: Some(ok_status()), entry: Some(e) },
                Err((err, existing)) => pb::batch_create_entry_response::Result { status: Some(err.to_result_status()), entry: existing },
            });
        }
        Ok(Response::new(pb::BatchCreateEntryResponse { results }))
    }

    async fn batch_update_entry(
        &self,
        req: Request<pb::BatchUpdateEntryRequest>,
    ) -> Result<Response<pb::BatchUpdateEntryResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.entry.v1.Entry/BatchUpdateEntry").await?;
        let ds = &self.state().datastore;
        let mask = req.get_ref().input_mask;
        // Each entry is checked and merged with its stored fields, then the batch is written
        // together (one transaction) and answered in request order.
        let mut merged_entries: Vec<Result<crate::datastore::Entry, ApiError>> = Vec::with_capacity(req.get_ref().entries.len());
        for e in &req.get_ref().entries {
            let r: Result<crate::datastore::Entry, ApiError> = async {
                if e.id.is_empty() {
                    return Err(ApiError::InvalidArgument("failed to convert entry: missing ID".into()));
                }
                let current = ds.get_entry(&e.id).await?.ok_or_else(|| ApiError::NotFound("entry not found".into()))?;
                // Fields outside the input mask keep their stored values (no mask = replace all).
                let mut merged = super::convert::entry_to_proto(&current);
                match &mask {
                    None => merged = e.clone(),
                    Some(m) => {
                        if m.spiffe_id {
                            merged.spiffe_id.clone_from(&e.spiffe_id);
                        }
                        if m.parent_id {
                            merged.parent_id.clone_from(&e.parent_id);
                        }
                        if m.selectors {
                            merged.selectors.clone_from(&e.selectors);
                        }
                        if m.x509_svid_ttl {
                            merged.x509_svid_ttl = e.x509_svid_ttl;
                        }
                        if m.jwt_svid_ttl {
                            merged.jwt_svid_ttl = e.jwt_svid_ttl;
                        }
                        if m.federates_with {
                            merged.federates_with.clone_from(&e.federates_with);
                        }
                        if m.admin {
                            merged.admin = e.admin;
                        }
                        if m.downstream {
                            merged.downstream = e.downstream;
                        }
                        if m.expires_at {
                            merged.expires_at = e.expires_at;
                        }
                        if m.dns_names {
                            merged.dns_names.clone_from(&e.dns_names);
                        }
                        if m.store_svid {
                            merged.store_svid = e.store_svid;
                        }
                        if m.hint {
                            merged.hint.clone_from(&e.hint);
                        }
                        if m.additional_attributes {
                            merged.additional_attributes = e.additional_attributes;
                        }
                    }
                }
                merged.id.clone_from(&e.id);
                entry_from_proto(&merged, &self.state().trust_domain)
            }
            .await;
            merged_entries.push(r);
        }
        let valid: Vec<crate::datastore::Entry> = merged_entries.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
        let mut updated = ds.update_entries(&valid).await.into_iter();
        let mut results = Vec::with_capacity(merged_entries.len());
        for r in merged_entries {
            let r: Result<pt::Entry, ApiError> = match r {
                Err(e) => Err(e),
                Ok(_) => match updated.next() {
                    Some(Ok(e)) => Ok(masked(entry_to_proto(&e), req.get_ref().output_mask.as_ref())),
                    Some(Err(crate::datastore::DatastoreError::NotFound(_))) => Err(ApiError::NotFound("entry not found".into())),
                    Some(Err(e)) => Err(e.into()),
                    None => Err(ApiError::Internal { public: "failed to update entry", detail: "no result".into() }),
                },
            };
            results.push(match r {
                Ok(e) => pb::batch_update_entry_response::Result { status: Some(ok_status()), entry: Some(e) },
                Err(err) => pb::batch_update_entry_response::Result { status: Some(err.to_result_status()), entry: None },
            });
        }
        Ok(Response::new(pb::BatchUpdateEntryResponse { results }))
    }

    async fn batch_delete_entry(
        &self,
        req: Request<pb::BatchDeleteEntryRequest>,
    ) -> Result<Response<pb::BatchDeleteEntryResponse>, Status> {
        self.authorize(&req, Policy::LocalOrAdmin, "/spire.api.server.entry.v1.Entry/BatchDeleteEntry").await?;
        let ids = &req.get_ref().ids;
        let wanted: Vec<String> = ids.iter().filter(|id| !id.is_empty()).cloned().collect();
        // Deleted together (one transaction), answered in request order.
        let mut deleted = self.state().datastore.delete_entries(&wanted).await.into_iter();
        let mut results = Vec::with_capacity(ids.len());
        for id in ids {
            let r = if id.is_empty() {
                Err(ApiError::InvalidArgument("missing entry ID".into()))
            } else {
                match deleted.next() {
                    Some(Ok(_)) => Ok(()),
                    Some(Err(crate::datastore::DatastoreError::NotFound(_))) => Err(ApiError::NotFound("entry not found".into())),
                    Some(Err(e)) => Err(e.into()),
                    None => Err(ApiError::Internal { public: "failed to delete entry", detail: "no result".into() }),
                }
            };
            results.push(pb::batch_delete_entry_response::Result {
                status: Some(r.map_or_else(|e| e.to_result_status(), |()| ok_status())),
                id: id.clone(),
            });
        }
        Ok(Response::new(pb::BatchDeleteEntryResponse { results }))
    }

    async fn get_authorized_entries(
        &self,
        req: Request<pb::GetAuthorizedEntriesRequest>,
    ) -> Result<Response<pb::GetAuthorizedEntriesResponse>, Status> {
        let caller = self.authorize(&req, Policy::Agent, "/spire.api.server.entry.v1.Entry/GetAuthorizedEntries").await?;
        let id = caller.id().ok_or(ApiError::PermissionDenied("/spire.api.server.entry.v1.Entry/GetAuthorizedEntries"))?;
        // Answered from memory: steady-state syncs never touch the datastore.
        let entries = self.state().entry_cache.authorized_entries_shared(id, now()).iter().map(|e| entry_to_proto(e)).collect();
        Ok(Response::new(pb::GetAuthorizedEntriesResponse { entries }))
    }

    type SyncAuthorizedEntriesStream = futures::stream::BoxStream<'static, Result<pb::SyncAuthorizedEntriesResponse, Status>>;

    async fn sync_authorized_entries(
        &self,
        req: Request<Streaming<pb::SyncAuthorizedEntriesRequest>>,
    ) -> Result<Response<Self::SyncAuthorizedEntriesStream>, Status> {
        const PAGE: usize = 500;
        let caller = self.authorize(&req, Policy::Agent, "/spire.api.server.entry.v1.Entry/SyncAuthorizedEntries").await?;
        let id = caller.id().cloned().ok_or(ApiError::PermissionDenied("/spire.api.server.entry.v1.Entry/SyncAuthorizedEntries"))?;
        let mut inbound = req.into_inner();
        let first = inbound.message().await?.ok_or_else(|| ApiError::InvalidArgument("missing initial request".into()))?;
        if !first.ids.is_empty() {
            return Err(ApiError::InvalidArgument("specifying IDs on initial request is not supported".into()).into());
        }
        if first.output_mask.is_some_and(|m| !m.revision_number) {
            return Err(ApiError::InvalidArgument("revision number cannot be masked".into()).into());
        }
        let entries = self.state().entry_cache.authorized_entries_shared(&id, now());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            if entries.len() <= PAGE {
                // Small sets: the whole set in one message, as SPIRE does.
                let all = entries.iter().map(|e| entry_to_proto(e)).collect();
                let _ = tx.send(Ok(pb::SyncAuthorizedEntriesResponse { entry_revisions: vec![], entries: all, more: false })).await;
                return;
            }
            let revisions: Vec<pb::EntryRevision> = entries
                .iter()
                .map(|e| pb::EntryRevision { id: e.id.clone(), revision_number: e.revision_number, created_at: e.created_at })
                .collect();
            let pages: Vec<&[pb::EntryRevision]> = revisions.chunks(PAGE).collect();
            for (i, page) in pages.iter().enumerate() {
                let more = i + 1 < pages.len();
                if tx.send(Ok(pb::SyncAuthorizedEntriesResponse { entry_revisions: page.to_vec(), entries: vec![], more })).await.is_err() {
                    return;
                }
            }
            let by_id: std::collections::HashMap<&str, &std::sync::Arc<Entry>> = entries.iter().map(|e| (e.id.as_str(), e)).collect();
            while let Ok(Some(r)) = inbound.message().await {
                let wanted: Vec<pt::Entry> = r.ids.iter().filter_map(|i| by_id.get(i.as_str())).map(|e| entry_to_proto(e)).collect();
                let chunks: Vec<&[pt::Entry]> = if wanted.is_empty() { vec![&[]] } else { wanted.chunks(PAGE).collect() };
                for (i, c) in chunks.iter().enumerate() {
                    let more = i + 1 < chunks.len();
                    if tx.send(Ok(pb::SyncAuthorizedEntriesResponse { entry_revisions: vec![], entries: c.to_vec(), more })).await.is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
