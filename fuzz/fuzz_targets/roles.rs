//! `roles::RoleSpec::parse` and `roles::RoleArn::parse` on arbitrary UTF-8.
//!
//! Asserts:
//! - neither panics;
//! - a parsed `RoleArn` keeps its input verbatim (`as_str`, `Display`), parses again to an
//!   equal value, is what `RoleSpec::parse` yields for the same string, and its `name()` is
//!   the last `/` segment of the resource: a valid IAM role name (1-64 of `A-Za-z0-9+=,.@_-`);
//!   in the `aws` partition, `RoleArn::build` from its parts gives the same ARN;
//! - a parsed `RoleSpec` has a valid name, round-trips through its canonical spelling
//!   (`arn`, `path/name@account`, `path/name`), and its `InAccount`/`Bare` forms build ARNs
//!   that `RoleArn::parse` accepts with the same name;
//! - `AccountId::parse` accepts exactly 12 ASCII digits; `Partition::for_region` is total.

#![no_main]

use libfuzzer_sys::fuzz_target;
use metadataproxy::roles::{AccountId, Partition, RoleArn, RoleSpec};

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+=,.@_-".contains(c)
}

fn assert_valid_name(name: &str, input: &str) {
    assert!(
        !name.is_empty() && name.len() <= 64 && name.chars().all(is_name_char),
        "{input:?} gave the invalid role name {name:?}"
    );
}

fn test_account() -> AccountId {
    AccountId::parse("123456789012").expect("12 digits")
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    let account = AccountId::parse(s);
    assert_eq!(
        account.is_some(),
        s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()),
        "AccountId::parse({s:?})"
    );
    if let Some(a) = &account {
        assert_eq!(a.as_str(), s);
    }
    assert!(Partition::for_region(s).as_str().starts_with("aws"));

    if let Ok(arn) = RoleArn::parse(s) {
        assert_eq!(arn.as_str(), s, "RoleArn::parse must keep its input");
        assert_eq!(arn.to_string(), s);
        assert_eq!(
            RoleArn::parse(arn.as_str()).as_ref(),
            Ok(&arn),
            "re-parse of {s:?}"
        );
        assert_eq!(
            RoleSpec::parse(s),
            Ok(RoleSpec::Arn(arn.clone())),
            "RoleSpec and RoleArn disagree on {s:?}"
        );
        let fields: Vec<&str> = s.splitn(6, ':').collect();
        assert_eq!(fields.len(), 6, "{s:?}");
        let path_and_name = fields[5].strip_prefix("role/").expect("a role resource");
        let last = path_and_name.rsplit('/').next().expect("one segment");
        assert_eq!(arn.name(), last, "name of {s:?}");
        assert_valid_name(arn.name(), s);
        assert!(AccountId::parse(fields[4]).is_some(), "account of {s:?}");
        if fields[1] == "aws" {
            let built = RoleArn::build(
                &Partition::for_region("us-east-1"),
                &AccountId::parse(fields[4]).expect("checked"),
                path_and_name,
            );
            assert_eq!(built, arn, "build vs parse for {s:?}");
        }
    }

    if let Ok(spec) = RoleSpec::parse(s) {
        assert_valid_name(spec.name(), s);
        let canonical = match &spec {
            RoleSpec::Arn(arn) => arn.as_str().to_string(),
            RoleSpec::InAccount {
                path_and_name,
                account,
            } => format!("{path_and_name}@{}", account.as_str()),
            RoleSpec::Bare(path_and_name) => path_and_name.clone(),
        };
        assert_eq!(
            RoleSpec::parse(&canonical).as_ref(),
            Ok(&spec),
            "{s:?} -> {spec:?} -> {canonical:?}"
        );
        let built = match &spec {
            RoleSpec::Arn(_) => None,
            RoleSpec::InAccount {
                path_and_name,
                account,
            } => Some(RoleArn::build(
                &Partition::for_region("eu-west-1"),
                account,
                path_and_name,
            )),
            RoleSpec::Bare(path_and_name) => Some(RoleArn::build(
                &Partition::for_region("cn-north-1"),
                &test_account(),
                path_and_name,
            )),
        };
        if let Some(built) = built {
            assert_eq!(built.name(), spec.name(), "built from {s:?}");
            assert_eq!(
                RoleArn::parse(built.as_str()).as_ref(),
                Ok(&built),
                "ARN built from {s:?} does not parse"
            );
        }
    }
});
