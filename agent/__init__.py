"""Trainer side: the Gymnasium env over the bridge, its reward, and SB3 PPO training and evaluation.

Importing the package registers ``CarlaBridge-v0``: ``gymnasium.make("CarlaBridge-v0", endpoint=...)``.
"""
from gymnasium.envs.registration import register, registry

ENV_ID = "CarlaBridge-v0"

if ENV_ID not in registry:
    # the env truncates by itself (max_episode_steps is one of its arguments), so no TimeLimit here
    register(id=ENV_ID, entry_point="agent.env:CarlaBridgeEnv")
