//! safegate policies (see issues).
