"""fedai's Flower ClientApp: node config -> local data -> (DP) training -> encode."""
