//! Paging through a list answer (`list`, `schedule list`): one page, or
//! with `--all` every page joined into one answer without a next token.
//!
//! Nothing here knows which RPC is called; the caller passes a function
//! that fetches the page at a token.

use std::future::Future;

use task_processor::pb;

use crate::errors::CliError;

/// A page of a list answer: its items and the token of the next page
/// (empty on the last).
pub trait Page {
    type Item;

    fn items_mut(&mut self) -> &mut Vec<Self::Item>;

    fn next_page_token_mut(&mut self) -> &mut String;
}

impl Page for pb::ListTasksResponse {
    type Item = pb::Task;

    fn items_mut(&mut self) -> &mut Vec<pb::Task> {
        &mut self.tasks
    }

    fn next_page_token_mut(&mut self) -> &mut String {
        &mut self.next_page_token
    }
}

impl Page for pb::ListSchedulesResponse {
    type Item = pb::Schedule;

    fn items_mut(&mut self) -> &mut Vec<pb::Schedule> {
        &mut self.schedules
    }

    fn next_page_token_mut(&mut self) -> &mut String {
        &mut self.next_page_token
    }
}

/// Which pages to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pages {
    /// The page at the first token only; its next token is kept so the
    /// person can ask for the page after it.
    One,
    /// That page and every one after it, as one answer.
    All,
}

/// Fetches the page at `first_token` (empty: the first page), and with
/// [`Pages::All`] the pages after it, appending their items to it.
pub async fn fetch<P, Fetch, Fut>(
    first_token: String,
    pages: Pages,
    mut fetch_page: Fetch,
) -> Result<P, CliError>
where
    P: Page,
    Fetch: FnMut(String) -> Fut,
    Fut: Future<Output = Result<P, CliError>>,
{
    let mut page = fetch_page(first_token.clone()).await?;
    if pages == Pages::One {
        return Ok(page);
    }
    let mut items = std::mem::take(page.items_mut());
    let mut previous_token = first_token;
    while !page.next_page_token_mut().is_empty() {
        let token = std::mem::take(page.next_page_token_mut());
        // A server that hands back the token it was given would keep us
        // here for ever.
        if token == previous_token {
            return Err(CliError::Protocol("the same page token twice".into()));
        }
        previous_token.clone_from(&token);
        page = fetch_page(token).await?;
        items.append(page.items_mut());
    }
    // The loop ends on a page without a next token: the joined answer has
    // none either.
    *page.items_mut() = items;
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(ids: &[&str], next: &str) -> pb::ListSchedulesResponse {
        pb::ListSchedulesResponse {
            schedules: ids
                .iter()
                .map(|id| pb::Schedule {
                    id: (*id).to_owned(),
                    ..Default::default()
                })
                .collect(),
            next_page_token: next.to_owned(),
        }
    }

    /// Serves pages "" → a, b (next "1") → c (next "2") → d (last).
    async fn serve(token: String) -> Result<pb::ListSchedulesResponse, CliError> {
        Ok(match token.as_str() {
            "" => page(&["a", "b"], "1"),
            "1" => page(&["c"], "2"),
            _ => page(&["d"], ""),
        })
    }

    fn ids(response: &pb::ListSchedulesResponse) -> Vec<&str> {
        response.schedules.iter().map(|s| s.id.as_str()).collect()
    }

    #[tokio::test]
    async fn one_page_keeps_its_token_and_all_pages_join() {
        let one = fetch(String::new(), Pages::One, serve).await.expect("one");
        assert_eq!(
            (ids(&one), one.next_page_token.as_str()),
            (vec!["a", "b"], "1")
        );
        let later = fetch("1".to_owned(), Pages::One, serve).await.expect("one");
        assert_eq!(ids(&later), ["c"]);
        let all = fetch(String::new(), Pages::All, serve).await.expect("all");
        assert_eq!(ids(&all), ["a", "b", "c", "d"]);
        assert!(all.next_page_token.is_empty());
    }

    #[tokio::test]
    async fn a_token_handed_back_is_an_error_not_a_loop() {
        let stuck = |_token: String| async { Ok(page(&["a"], "same")) };
        let error = fetch(String::new(), Pages::All, stuck)
            .await
            .expect_err("the same token twice");
        assert!(matches!(error, CliError::Protocol(_)), "{error}");
    }
}
