//! Role names and ARNs: the formats of `IAM_ROLE` and what they resolve to.

use std::fmt;

/// A 12-digit AWS account id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountId(String);

impl AccountId {
    /// Parses exactly 12 ASCII digits.
    pub fn parse(s: &str) -> Option<AccountId> {
        (s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())).then(|| AccountId(s.to_string()))
    }

    /// The digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An AWS partition, the second field of an ARN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Partition(String);

impl Partition {
    /// The partition a region belongs to.
    pub fn for_region(region: &str) -> Partition {
        let p = if region.starts_with("cn-") {
            "aws-cn"
        } else if region.starts_with("us-gov-") {
            "aws-us-gov"
        } else if region.starts_with("us-isob-") {
            "aws-iso-b"
        } else if region.starts_with("us-iso-") {
            "aws-iso"
        } else if region.starts_with("eu-isoe-") {
            "aws-iso-e"
        } else if region.starts_with("us-isof-") {
            "aws-iso-f"
        } else {
            "aws"
        };
        Partition(p.to_string())
    }

    /// The partition name, such as `aws` or `aws-cn`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a role string could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleParseError {
    /// Nothing was given.
    #[error("empty role")]
    Empty,
    /// An ARN that is not an IAM role ARN.
    #[error("not an IAM role ARN (expected arn:<partition>:iam::<account>:role/<name>)")]
    BadArn,
    /// `name@account` with an account that is not 12 digits.
    #[error("the account after @ must be 12 digits")]
    BadAccount,
    /// A name or path with characters IAM does not allow.
    #[error("role names and paths allow only A-Z a-z 0-9 + = , . @ _ - (names 1-64 characters)")]
    BadName,
}

/// A role as written in `IAM_ROLE` or `DEFAULT_ROLE`, before resolution.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RoleSpec {
    /// A complete ARN.
    Arn(RoleArn),
    /// `[path/]name@account`.
    InAccount {
        /// Path and name, `path/to/name`.
        path_and_name: String,
        /// The account.
        account: AccountId,
    },
    /// A bare name: the account comes from `DEFAULT_ACCOUNT_ID` or `iam:GetRole`.
    Bare(String),
}

impl RoleSpec {
    /// Parses any of the supported formats.
    pub fn parse(s: &str) -> Result<RoleSpec, RoleParseError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(RoleParseError::Empty);
        }
        if s.starts_with("arn:") {
            return RoleArn::parse(s).map(RoleSpec::Arn);
        }
        // `@` is legal in role names: only an all-digit suffix is an account.
        let account_suffix = s
            .rsplit_once('@')
            .filter(|(_, acct)| acct.bytes().all(|b| b.is_ascii_digit()));
        if let Some((path_and_name, account)) = account_suffix {
            let account = AccountId::parse(account).ok_or(RoleParseError::BadAccount)?;
            let path_and_name = path_and_name.trim_start_matches('/');
            check_path_and_name(path_and_name)?;
            return Ok(RoleSpec::InAccount {
                path_and_name: path_and_name.to_string(),
                account,
            });
        }
        let name = s.trim_start_matches('/');
        check_path_and_name(name)?;
        Ok(RoleSpec::Bare(name.to_string()))
    }

    /// The role name (the last `/` segment), as containers see it in the listing.
    pub fn name(&self) -> &str {
        match self {
            RoleSpec::Arn(arn) => arn.name(),
            RoleSpec::InAccount { path_and_name, .. } => last_segment(path_and_name),
            RoleSpec::Bare(name) => last_segment(name),
        }
    }
}

fn last_segment(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+=,.@_-".contains(c)
}

fn check_path_and_name(s: &str) -> Result<(), RoleParseError> {
    let mut segments = s.split('/');
    let name = segments.next_back().unwrap_or_default();
    if name.is_empty() || name.len() > 64 || !name.chars().all(is_name_char) {
        return Err(RoleParseError::BadName);
    }
    for seg in segments {
        if seg.is_empty() || !seg.chars().all(is_name_char) {
            return Err(RoleParseError::BadName);
        }
    }
    if s.len() > 512 {
        return Err(RoleParseError::BadName);
    }
    Ok(())
}

/// A resolved IAM role ARN: `arn:<partition>:iam::<account>:role/<path/>name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoleArn {
    arn: String,
    name_start: usize,
}

impl RoleArn {
    /// Parses an IAM role ARN in any partition.
    pub fn parse(s: &str) -> Result<RoleArn, RoleParseError> {
        let mut parts = s.splitn(6, ':');
        let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(RoleParseError::BadArn);
        };
        if !partition.starts_with("aws")
            || !partition
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '-')
        {
            return Err(RoleParseError::BadArn);
        }
        AccountId::parse(account).ok_or(RoleParseError::BadAccount)?;
        let path_and_name = resource
            .strip_prefix("role/")
            .ok_or(RoleParseError::BadArn)?;
        check_path_and_name(path_and_name)?;
        Ok(RoleArn {
            arn: s.to_string(),
            name_start: s.len() - last_segment(path_and_name).len(),
        })
    }

    /// Builds the ARN of `path_and_name` in `account`.
    pub fn build(partition: &Partition, account: &AccountId, path_and_name: &str) -> RoleArn {
        let arn = format!(
            "arn:{}:iam::{}:role/{}",
            partition.as_str(),
            account.as_str(),
            path_and_name
        );
        RoleArn {
            name_start: arn.len() - last_segment(path_and_name).len(),
            arn,
        }
    }

    /// The role name: the last `/` segment.
    pub fn name(&self) -> &str {
        &self.arn[self.name_start..]
    }

    /// The whole ARN.
    pub fn as_str(&self) -> &str {
        &self.arn
    }

    /// The partition, such as `aws` or `aws-cn`.
    pub fn partition(&self) -> &str {
        self.arn.split(':').nth(1).unwrap_or_default()
    }

    /// The role's account (12 digits).
    pub fn account(&self) -> &str {
        self.arn.split(':').nth(4).unwrap_or_default()
    }
}

impl fmt::Display for RoleArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.arn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_format_parses_with_its_name() {
        let cases = [
            ("my-role", "my-role"),
            ("my-role@123456789012", "my-role"),
            ("path/to/my-role@123456789012", "my-role"),
            ("arn:aws:iam::123456789012:role/path/my-role", "my-role"),
            ("arn:aws-cn:iam::123456789012:role/r", "r"),
            ("arn:aws-us-gov:iam::123456789012:role/a/b/c", "c"),
            ("svc+role=x,y.z@q_w-e", "svc+role=x,y.z@q_w-e"),
        ];
        for (input, name) in cases {
            let spec = RoleSpec::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(spec.name(), name, "{input}");
        }
    }

    #[test]
    fn name_at_account_keeps_the_path() {
        assert_eq!(
            RoleSpec::parse("path/to/my-role@123456789012").unwrap(),
            RoleSpec::InAccount {
                path_and_name: "path/to/my-role".into(),
                account: AccountId::parse("123456789012").unwrap(),
            }
        );
    }

    #[test]
    fn malformed_roles_are_refused() {
        for bad in [
            "",
            "a b",
            "role@12345",
            "role@",
            "arn:aws:iam::123456789012:user/bob",
            "arn:aws:s3:::bucket",
            "arn:aws:iam::12345:role/x",
            "arn:aws:iam::123456789012:role/",
            "a//b",
            "x/",
            "é",
        ] {
            assert!(RoleSpec::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn partitions_follow_regions() {
        assert_eq!(Partition::for_region("us-east-1").as_str(), "aws");
        assert_eq!(Partition::for_region("cn-north-1").as_str(), "aws-cn");
        assert_eq!(
            Partition::for_region("us-gov-west-1").as_str(),
            "aws-us-gov"
        );
        let arn = RoleArn::build(
            &Partition::for_region("cn-north-1"),
            &AccountId::parse("123456789012").unwrap(),
            "p/r",
        );
        assert_eq!(arn.as_str(), "arn:aws-cn:iam::123456789012:role/p/r");
        assert_eq!(arn.name(), "r");
        assert_eq!(arn.partition(), "aws-cn");
        assert_eq!(arn.account(), "123456789012");
        let parsed = RoleArn::parse("arn:aws-us-gov:iam::210987654321:role/a/b").unwrap();
        assert_eq!(
            (parsed.partition(), parsed.account()),
            ("aws-us-gov", "210987654321")
        );
    }
}
