//! Whole-state validation: every problem is reported with the field path and the reason.

use crate::model::State;

#[derive(Debug, thiserror::Error)]
#[error("invalid state: {field}: {reason}")]
pub struct ValidationError {
    pub field: String,
    pub reason: String,
}

pub fn validate(state: &State) -> Result<(), ValidationError> {
    let mut names = std::collections::HashSet::new();
    for (i, itf) in state.interfaces.iter().enumerate() {
        if !names.insert(itf.name.as_str()) {
            return Err(ValidationError {
                field: format!("interfaces[{i}].name"),
                reason: format!("duplicate interface {:?}", itf.name),
            });
        }
    }
    Ok(())
}
