//! Keeps `docs/api.md` honest: its route table equals [`super::endpoints`] (method, path,
//! roles, limits) and its error table equals [`ErrorCode::ALL`] (code and status).

use super::{endpoints, Access, BodyClass, ErrorCode, RateClass};

const API_MD: &str = include_str!("../../docs/api.md");

/// The cells of the rows of the first table under the heading `## {section}`, header and
/// separator left out, each cell trimmed and stripped of backticks.
fn table(section: &str) -> Vec<Vec<String>> {
    let heading = format!("## {section}");
    let Some(start) = API_MD.lines().position(|l| l.trim() == heading) else {
        panic!("docs/api.md has no section {heading:?}");
    };
    API_MD
        .lines()
        .skip(start + 1)
        .take_while(|l| !l.starts_with("## "))
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('`', ""))
                .collect()
        })
        .collect()
}

#[test]
fn the_error_table_lists_every_code_with_its_status() {
    let documented: Vec<(String, String)> = table("Errors")
        .into_iter()
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect();
    let in_code: Vec<(String, String)> = ErrorCode::ALL
        .iter()
        .map(|c| (c.as_str().to_owned(), c.status().as_u16().to_string()))
        .collect();
    assert_eq!(
        documented, in_code,
        "docs/api.md `## Errors` and ErrorCode differ (code, status; in the enum's order)"
    );
}

#[test]
fn the_route_table_matches_the_endpoints() {
    let documented: Vec<[String; 4]> = table("Routes")
        .into_iter()
        .map(|row| {
            [
                row[0].clone(),
                row[1].clone(),
                row[2].clone(),
                row[3].clone(),
            ]
        })
        .collect();
    let in_code: Vec<[String; 4]> = endpoints()
        .iter()
        .map(|e| {
            let roles = match e.access {
                Access::Public => "public".to_owned(),
                Access::Roles(roles) => roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                Access::ScrapeToken => "scrape token".to_owned(),
                Access::Undeclared => "undeclared".to_owned(),
            };
            let mut limits = Vec::new();
            if e.rate == RateClass::Sensitive {
                limits.push("sensitive");
            }
            if e.body == BodyClass::Bulk {
                limits.push("bulk");
            }
            [
                e.method.to_string(),
                e.path.to_owned(),
                roles,
                limits.join(", "),
            ]
        })
        .collect();
    assert_eq!(
        documented, in_code,
        "docs/api.md `## Routes` and the route table differ (method, path, roles, limits)"
    );
}
