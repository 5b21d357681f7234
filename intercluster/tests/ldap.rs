//! The LDAP user source against a real OpenLDAP slapd started by each test on 127.0.4.x.
//!
//! The source binds as a service account (not the rootdn), so slapd's default size limit of 500
//! entries per search is in force. With stock limits that also caps a paged search in total
//! (`size.prtotal` defaults to the hard limit), so the deployment grants the service account
//! `limits dn.exact=<service dn> size.prtotal=unlimited`; the soft limit of 500 stays, which the
//! paging test checks first with an unpaged search.

#[path = "../../tests/support/slapd.rs"]
mod slapd;

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use fedgate_intercluster::ldap_source::{
    LdapSourceConfig, LdapSourceError, LdapStep, LdapUsers, fetch_users,
};
use slapd::Slapd;

const SUFFIX: &str = "dc=example,dc=test";
const PEOPLE: &str = "ou=people,dc=example,dc=test";
const SERVICE_DN: &str = "cn=fedgate,ou=services,dc=example,dc=test";
const SERVICE_PW: &str = "svc pass 42";
const ENABLED_FILTER: &str = "(&(objectClass=inetOrgPerson)(!(employeeType=disabled)))";

/// A slapd with ou=people and the service account, plus a password file for that account.
struct Directory {
    slapd: Slapd,
    _dir: tempfile::TempDir,
    password_file: PathBuf,
}

/// The slapd directive that lets the service account page past the size limit.
fn paging_limit() -> String {
    format!("limits dn.exact=\"{SERVICE_DN}\" size.prtotal=unlimited")
}

fn directory(last_octet: u8) -> Directory {
    directory_with(last_octet, &[&paging_limit()])
}

fn directory_with(last_octet: u8, directives: &[&str]) -> Directory {
    let ip = Ipv4Addr::new(127, 0, 4, last_octet);
    // A free port rather than a fixed one: another run of this binary may be going on.
    let port = slapd::free_port(ip).expect("free port");
    let slapd = Slapd::start_with_directives(ip, port, SUFFIX, "admin-secret", directives)
        .expect("slapd starts");
    slapd
        .add_ldif(&format!(
            "dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n\n\
             dn: {SERVICE_DN}\nobjectClass: person\ncn: fedgate\nsn: service\n\
             userPassword: {SERVICE_PW}\n"
        ))
        .expect("base entries");
    let dir = tempfile::tempdir().expect("tempdir");
    let password_file = dir.path().join("bind.pw");
    std::fs::write(&password_file, format!("{SERVICE_PW}\n")).expect("password file");
    Directory {
        slapd,
        _dir: dir,
        password_file,
    }
}

impl Directory {
    fn config(&self, attribute: &str) -> LdapSourceConfig {
        LdapSourceConfig {
            url: self.slapd.url().to_owned(),
            bind_dn: Some(SERVICE_DN.to_owned()),
            bind_password_file: Some(self.password_file.clone()),
            base: PEOPLE.to_owned(),
            filter: ENABLED_FILTER.to_owned(),
            attribute: attribute.to_owned(),
            domain: None,
            timeout_secs: 10,
            page_size: 500,
        }
    }
}

/// LDIF for one person; `mail` is optional, `disabled` sets employeeType=disabled.
fn person(uid: &str, mail: Option<&str>, disabled: bool) -> String {
    let mut s = format!(
        "dn: uid={uid},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n"
    );
    if let Some(mail) = mail {
        let _ = writeln!(s, "mail: {mail}");
    }
    let kind = if disabled { "disabled" } else { "enabled" };
    let _ = writeln!(s, "employeeType: {kind}\n");
    s
}

async fn fetch(cfg: &LdapSourceConfig) -> LdapUsers {
    fetch_users(cfg).await.expect("fetch_users succeeds")
}

/// LDIF for 1,200 enabled users with mixed-case mail plus 25 disabled ones, and the expected
/// (sorted, lowercase) result.
fn many_users() -> (String, Vec<String>) {
    let mut ldif = String::new();
    let mut expected = Vec::new();
    for i in 0..1200 {
        // Mixed case in the directory; the source returns lowercase.
        ldif.push_str(&person(
            &format!("user{i:04}"),
            Some(&format!("User{i:04}@Example.Test")),
            false,
        ));
        expected.push(format!("user{i:04}@example.test"));
    }
    for i in 0..25 {
        ldif.push_str(&person(
            &format!("gone{i:02}"),
            Some(&format!("gone{i:02}@example.test")),
            true,
        ));
    }
    expected.sort();
    (ldif, expected)
}

#[tokio::test]
async fn paged_fetch_returns_all_1200_users_beyond_the_500_size_limit() {
    let d = directory(2);
    let (ldif, expected) = many_users();
    d.slapd.add_ldif(&ldif).expect("load users");

    // Precondition: an unpaged search by the service account hits slapd's size limit.
    let (conn, mut ldap) = ldap3::LdapConnAsync::new(d.slapd.url())
        .await
        .expect("connect");
    let driver = tokio::spawn(conn.drive());
    ldap.simple_bind(SERVICE_DN, SERVICE_PW)
        .await
        .expect("bind")
        .success()
        .expect("bind ok");
    let unpaged = ldap
        .search(PEOPLE, ldap3::Scope::Subtree, ENABLED_FILTER, vec!["mail"])
        .await
        .expect("unpaged search");
    assert_eq!(unpaged.1.rc, 4, "sizeLimitExceeded expected: {}", unpaged.1);
    assert_eq!(unpaged.0.len(), 500);
    let _ = ldap.unbind().await;
    let _ = driver.await;

    let cfg = d.config("mail");
    let got = fetch(&cfg).await;
    assert_eq!(got.users.len(), 1200);
    assert_eq!(got.users, expected);
    assert_eq!(got.skipped, Vec::<(String, String)>::new());

    // Smaller pages give the same answer.
    let small_pages = LdapSourceConfig {
        page_size: 170,
        ..cfg
    };
    assert_eq!(fetch(&small_pages).await.users, expected);
}

#[tokio::test]
async fn a_server_capping_the_paged_total_gives_an_error_not_a_truncated_list() {
    // Stock slapd limits: no size.prtotal grant for the service account.
    let d = directory_with(11, &[]);
    let (ldif, _) = many_users();
    d.slapd.add_ldif(&ldif).expect("load users");
    let cfg = d.config("mail");
    match fetch_users(&cfg).await {
        Err(LdapSourceError::Search { base, reason, .. }) => {
            assert_eq!(base, PEOPLE);
            assert!(reason.contains("sizeLimitExceeded"), "{reason}");
        }
        other => panic!("expected a Search error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_filter_excludes_disabled_users() {
    let d = directory(3);
    d.slapd
        .add_ldif(
            &[
                person("alice", Some("alice@example.test"), false),
                person("bob", Some("bob@example.test"), true),
                person("carol", Some("carol@example.test"), false),
            ]
            .concat(),
        )
        .expect("load users");
    let cfg = d.config("mail");
    assert_eq!(
        fetch(&cfg).await.users,
        ["alice@example.test", "carol@example.test"]
    );
    // The same directory with a filter that does not look at employeeType: bob is there.
    let everyone = LdapSourceConfig {
        filter: "(objectClass=inetOrgPerson)".into(),
        ..cfg
    };
    assert_eq!(
        fetch(&everyone).await.users,
        [
            "alice@example.test",
            "bob@example.test",
            "carol@example.test"
        ]
    );
}

#[tokio::test]
async fn uid_attribute_with_domain_gives_user_at_domain_anonymously() {
    let d = directory(4);
    d.slapd
        .add_ldif(
            &[
                person("Dave", None, false),
                person("erin", Some("erin@corp.example"), false),
            ]
            .concat(),
        )
        .expect("load users");
    let cfg = LdapSourceConfig {
        bind_dn: None,
        bind_password_file: None,
        domain: Some("example.test".into()),
        ..d.config("uid")
    };
    let got = fetch(&cfg).await;
    assert_eq!(got.users, ["dave@example.test", "erin@example.test"]);
    assert!(got.skipped.is_empty(), "{:?}", got.skipped);
}

#[tokio::test]
async fn additions_removals_and_disabling_are_seen_on_the_next_fetch() {
    let d = directory(5);
    d.slapd
        .add_ldif(
            &[
                person("alice", Some("alice@example.test"), false),
                person("bob", Some("bob@example.test"), false),
                person("carol", Some("carol@example.test"), false),
            ]
            .concat(),
        )
        .expect("load users");
    let cfg = d.config("mail");
    assert_eq!(
        fetch(&cfg).await.users,
        [
            "alice@example.test",
            "bob@example.test",
            "carol@example.test"
        ]
    );

    let mut changes = person("dan", Some("dan@example.test"), false);
    changes = changes.replacen('\n', "\nchangetype: add\n", 1);
    changes.push_str(&format!("dn: uid=bob,{PEOPLE}\nchangetype: delete\n\n"));
    changes.push_str(&format!(
        "dn: uid=carol,{PEOPLE}\nchangetype: modify\nreplace: employeeType\nemployeeType: disabled\n-\n\n"
    ));
    d.slapd.modify(&changes).expect("apply changes");

    assert_eq!(
        fetch(&cfg).await.users,
        ["alice@example.test", "dan@example.test"]
    );
}

#[tokio::test]
async fn a_wrong_bind_password_is_a_bind_error_naming_the_dn() {
    let d = directory(6);
    let wrong = d.password_file.with_file_name("wrong.pw");
    std::fs::write(&wrong, "not the password\n").expect("write");
    let cfg = LdapSourceConfig {
        bind_password_file: Some(wrong),
        ..d.config("mail")
    };
    match fetch_users(&cfg).await {
        Err(LdapSourceError::Bind { dn, reason }) => {
            assert_eq!(dn, SERVICE_DN);
            assert!(reason.contains("invalidCredentials"), "{reason}");
        }
        other => panic!("expected a Bind error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.4.7:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let cfg = LdapSourceConfig {
        url: format!("ldap://{addr}"),
        bind_dn: None,
        bind_password_file: None,
        base: PEOPLE.into(),
        filter: ENABLED_FILTER.into(),
        attribute: "mail".into(),
        domain: None,
        timeout_secs: 10,
        page_size: 500,
    };
    match fetch_users(&cfg).await {
        Err(LdapSourceError::Connect { url, reason }) => {
            assert_eq!(url, cfg.url);
            assert!(reason.to_lowercase().contains("refused"), "{reason}");
        }
        other => panic!("expected a Connect error, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_values_are_skipped_with_their_dn() {
    let d = directory(8);
    d.slapd
        .add_ldif(
            &[
                person("alice", Some("alice@example.test"), false),
                person("bob", Some("bob"), false),
                person("carol", Some("carol@example.test/phone"), false),
                person("nomail", None, false),
            ]
            .concat(),
        )
        .expect("load users");
    // A value with inner whitespace (LDIF keeps it as given).
    d.slapd
        .add_ldif(&person("dan", Some("dan smith@example.test"), false))
        .expect("load dan");
    let got = fetch(&d.config("mail")).await;
    assert_eq!(got.users, ["alice@example.test"]);
    let mut skipped = got.skipped.clone();
    skipped.sort();
    let dns: Vec<&str> = skipped.iter().map(|(dn, _)| dn.as_str()).collect();
    assert_eq!(
        dns,
        [
            format!("uid=bob,{PEOPLE}"),
            format!("uid=carol,{PEOPLE}"),
            format!("uid=dan,{PEOPLE}"),
            format!("uid=nomail,{PEOPLE}"),
        ]
    );
    assert!(skipped[0].1.contains("no '@'"), "{}", skipped[0].1);
    assert!(skipped[1].1.contains("resource"), "{}", skipped[1].1);
    assert!(skipped[2].1.contains("whitespace"), "{}", skipped[2].1);
    assert!(skipped[3].1.contains("no value"), "{}", skipped[3].1);
}

#[tokio::test]
async fn a_missing_search_base_is_a_search_error() {
    let d = directory(10);
    let cfg = LdapSourceConfig {
        base: format!("ou=nobody,{SUFFIX}"),
        ..d.config("mail")
    };
    match fetch_users(&cfg).await {
        Err(LdapSourceError::Search {
            base,
            filter,
            reason,
        }) => {
            assert_eq!(base, cfg.base);
            assert_eq!(filter, ENABLED_FILTER);
            assert!(reason.contains("noSuchObject"), "{reason}");
        }
        other => panic!("expected a Search error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_in_the_bind() {
    // Accepts the TCP connection but never says anything.
    let listener = tokio::net::TcpListener::bind("127.0.4.9:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.expect("accept");
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        drop(sock);
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "x").expect("write");
    let cfg = LdapSourceConfig {
        url: format!("ldap://{addr}"),
        bind_dn: Some(SERVICE_DN.into()),
        bind_password_file: Some(pw),
        base: PEOPLE.into(),
        filter: ENABLED_FILTER.into(),
        attribute: "mail".into(),
        domain: None,
        timeout_secs: 1,
        page_size: 500,
    };
    match fetch_users(&cfg).await {
        Err(LdapSourceError::Timeout { url, step, secs }) => {
            assert_eq!(url, cfg.url);
            assert_eq!(step, LdapStep::Bind);
            assert_eq!(secs, 1);
        }
        other => panic!("expected a Timeout error, got {other:?}"),
    }
    holder.abort();
}
