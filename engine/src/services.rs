//! A type map of shared resources handed to phases, so that phase crates can add runtimes and
//! clients without the engine knowing their types.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Default)]
pub struct Services {
    items: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Services {
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.items.insert(TypeId::of::<T>(), Arc::new(value));
    }

    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.items
            .get(&TypeId::of::<T>())
            .and_then(|v| v.clone().downcast::<T>().ok())
    }
}
