"""What acts on the environment: the meta-agent, baselines and the deployable pilot."""
